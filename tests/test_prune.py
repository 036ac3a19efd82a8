"""charformer.prune end to end on a tiny 2-layer segmenter: the layer whose removal costs least is dropped, the
F1 of the pruned model matches the importance measured for it, and the result is a 1-layer checkpoint; a
recovery by distillation brings the pruned model's tag distributions to the original's."""

import json

import pytest
import torch

import finetune
from charformer import prune
from charformer.data import pad_sequences
from charformer.errors import CharformerError
from charformer.finetuning.distill import kl_divergence, tag_distribution
from charformer.prune import without_layers
from charformer.tasks.checkpoint import load_task_checkpoint
from charformer.tasks.heads import real_positions

WORDS = ["中国", "人民", "站", "起来", "了", "我们", "北京", "天安门", "，", "。"]


@pytest.fixture(scope="module")
def two_layer_segmenter(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    lines = [" ".join(WORDS[(i * 3 + j * 7) % len(WORDS)] for j in range(3 + i % 6)) for i in range(40)]
    data = root / "cws.txt"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    finetune.main(["--task", "cws", "--train", str(data), "--dev", str(data), "--test", str(data), "--init", "scratch",
                   "--out", str(root / "seg"), "--n-layers", "2", "--n-heads", "2", "--d-model", "32", "--block-size",
                   "16", "--batch-size", "8", "--max-steps", "8", "--lr", "3e-3", "--device", "cpu",
                   "--log-interval", "10", "--eval-interval", "1000"])
    return root / "seg", data


def test_prune_drops_the_least_important_layer(two_layer_segmenter, tmp_path):
    ckpt, data = two_layer_segmenter
    out = tmp_path / "pruned"
    files = ["--train", str(data), "--dev", str(data), "--test", str(data)]
    assert prune.main(["--ckpt", str(ckpt), *files, "--out", str(out), "--drop-layers", "1", "--recover-steps", "4",
                       "--repeats", "1"]) == 0
    r = json.loads((out / "results.json").read_text())
    importance = r["layer_importance_dev_f1_points"]
    assert len(importance) == 2 and r["dropped_layers"] == [importance.index(min(importance))]
    # dev == test here: the pruned model before recovery loses exactly the importance of the dropped layer
    lost = r["original"]["test_f1"] - r["pruned_before_recovery"]["test_f1"]
    assert lost == pytest.approx(min(importance), abs=0.02)
    model, _, task = load_task_checkpoint(out / "best")
    assert model.body.cfg.n_layers == 1 and task["task"] == "cws"
    per_block = sum(p.numel() for p in model.body.blocks[0].parameters())
    assert r["original"]["parameters"] - r["pruned"]["parameters"] == per_block
    assert r["pruned"]["model_bytes"] < r["original"]["model_bytes"]
    assert r["original"]["chars_per_s"] > 0 and r["speedup"] == pytest.approx(
        r["pruned"]["chars_per_s"] / r["original"]["chars_per_s"], rel=1e-2)

    with pytest.raises(CharformerError, match="--drop-layers must be between 1 and 1"):
        prune.main(["--ckpt", str(ckpt), *files, "--out", str(tmp_path / "x"), "--drop-layers", "2"])
    with pytest.raises(CharformerError, match="not empty"):
        prune.main(["--ckpt", str(ckpt), *files, "--out", str(out)])


def test_recovery_by_distillation_from_the_original(two_layer_segmenter, tmp_path):
    ckpt, data = two_layer_segmenter
    files = ["--train", str(data), "--dev", str(data), "--test", str(data), "--repeats", "1", "--lr", "3e-3"]
    out = tmp_path / "distilled"
    prune.main(["--ckpt", str(ckpt), *files, "--out", str(out), "--recover-steps", "30", "--distill-alpha", "1",
                "--distill-temperature", "2"])
    r = json.loads((out / "results.json").read_text())
    assert r["config"]["distill_alpha"] == 1.0 and r["config"]["distill_temperature"] == 2.0
    # alpha = 1: the pruned model learns the original's tag distributions alone, and comes far closer to them
    # than before recovery or after a recovery on the gold tags.
    original, vocab, _ = load_task_checkpoint(ckpt)
    pruned = load_task_checkpoint(out / "best")[0]
    before = without_layers(original, set(r["dropped_layers"]))
    rows = [vocab.encode(line.replace(" ", ""))[:16] for line in data.read_text(encoding="utf-8").splitlines()]
    ids, lengths = pad_sequences(rows)

    def kl_from_original(model) -> float:
        with torch.no_grad():
            log_p, log_q = (tag_distribution(m.head, m(ids, lengths), lengths, 1.0) for m in (original, model))
        return kl_divergence(log_p, log_q, real_positions(lengths, ids.shape[1])).item()

    plain = tmp_path / "plain"  # the same recovery on the gold tags alone
    prune.main(["--ckpt", str(ckpt), *files, "--out", str(plain), "--recover-steps", "30"])
    distilled = kl_from_original(pruned)
    assert distilled < kl_from_original(before) / 10
    assert distilled < kl_from_original(load_task_checkpoint(plain / "best")[0]) / 10
    with pytest.raises(CharformerError, match="distill_alpha"):
        prune.main(["--ckpt", str(ckpt), *files, "--out", str(tmp_path / "bad"), "--distill-alpha", "2"])
