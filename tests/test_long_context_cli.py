"""pretrain.py with the long-context options (--shorten, --shorten-layers, --window, --attn-impl local): saved in
config.json, rebuilt by load_checkpoint, resumed, and given through a TOML config as well as flags."""

import json
from pathlib import Path

import pytest
import torch

import finetune
import pretrain
from charformer import CharTransformer, ModelConfig, load_checkpoint
from charformer.cli import build_dataclass, parse_with_config

ROOT = Path(__file__).resolve().parents[1]

OPTIONS = ["--n-layers", "4", "--n-heads", "2", "--d-model", "32", "--block-size", "24", "--batch-size", "4",
           "--device", "cpu", "--log-interval", "1", "--warmup-steps", "2", "--eval-interval", "3",
           "--shorten", "2", "--shorten-layers", "1", "2", "1", "--window", "8", "--attn-impl", "local"]


def test_pretrain_saves_and_reloads_a_windowed_hourglass(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"第{i}行：春眠不觉晓，处处闻啼鸟。\n" for i in range(60)), encoding="utf-8")
    out = tmp_path / "run"
    assert pretrain.main(["--data", str(corpus), "--out", str(out), "--max-steps", "3", *OPTIONS]) == 0
    saved = json.loads((out / "best" / "config.json").read_text())["model"]
    assert (saved["shorten"], saved["shorten_layers"], saved["window"], saved["attn_impl"]) == (2, [1, 2, 1], 8, "local")
    model, vocab, _ = load_checkpoint(out / "best")
    assert model.hourglass is not None and model.blocks[1].attn.window == 4  # ceil(8 / 2) groups in the middle
    x = torch.tensor([vocab.encode("春眠不觉晓，处处闻啼鸟。")])
    assert torch.isfinite(model(x)).all()

    # The same options from a TOML file, continuing the run: resuming checks the model options match.
    config = tmp_path / "long.toml"
    config.write_text("shorten = 2\nshorten_layers = [1, 2, 1]\nwindow = 8\nattn_impl = \"local\"\n")
    flags = OPTIONS[: OPTIONS.index("--shorten")]
    assert pretrain.main(["--config", str(config), "--data", str(corpus), "--out", str(out), "--max-steps", "5",
                          "--resume", *flags]) == 0
    assert json.loads((out / "results.json").read_text())["steps"] == 5


@pytest.mark.parametrize("name", ["shakespeare_char_hourglass_cpu", "zh_novels_long_cpu"])
def test_long_context_configs_build_their_models(name):
    args = parse_with_config(pretrain.build_parser(), ["--config", str(ROOT / "configs" / f"{name}.toml")])
    cfg = build_dataclass(ModelConfig, args, vocab_size=100)
    model = CharTransformer(cfg)
    assert cfg.shorten > 1 and model.hourglass is not None
    x = torch.randint(0, 100, (1, 37))
    assert model(x).shape == (1, 37, 100)


def test_finetune_trains_a_downsampled_gbst_encoder_from_scratch(tmp_path):
    words = ["中国", "人民", "站", "起来", "了", "我们", "北京", "天安门", "，", "。"]
    lines = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(3 + i % 6)) for i in range(40)]
    data = tmp_path / "cws.txt"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "cws"
    assert finetune.main(["--task", "cws", "--train", str(data), "--dev", str(data), "--test", str(data), "--init",
                          "scratch", "--out", str(out), "--n-layers", "2", "--n-heads", "2", "--d-model", "32",
                          "--block-size", "16", "--batch-size", "8", "--device", "cpu", "--max-steps", "5",
                          "--shorten", "2", "--shorten-layers", "1", "1", "0", "--shorten-pool", "gbst"]) == 0
    saved = json.loads((out / "best" / "config.json").read_text())["model"]
    assert (saved["causal"], saved["shorten"], saved["shorten_pool"]) == (False, 2, "gbst")
    results = json.loads((out / "results.json").read_text())
    assert results["test_after"]["f1"] > results["test_before"]["f1"]  # 5 steps on 40 repetitive sentences
