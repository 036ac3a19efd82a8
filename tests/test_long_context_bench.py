"""The measuring scripts of long text and downsampled encoders, on tiny models: bench/long_context.py's
context-length study (same characters at every block size) and bench/encoders.py's step timing and speed rows."""

import json

import pytest

import pretrain
from bench import encoders, long_context

TINY = "n_layers = 4\nn_heads = 2\nd_model = 16\nnorm = \"layernorm\"\ndevice = \"cpu\"\nlr = 1e-3\n"


def test_context_study_trains_every_block_size_on_the_same_characters(tmp_path):
    text = tmp_path / "novel.txt"
    text.write_text("".join(f"第{i}回　宝玉和黛玉说话，袭人笑道：“去罢。”\n" for i in range(400)), encoding="utf-8")
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    long_context.main(["context", "--config", str(config), "--data", str(text), "--lengths", "16", "64",
                       "--chars-per-step", "128", "--context-steps", "3", "--variants", "plain", "K2 [1,2,1]",
                       "--out", str(tmp_path / "out"), "--tag", "_tiny"])
    result = json.loads((tmp_path / "out" / "long_context_context_tiny.json").read_text())
    rows = result["rows"]
    assert [(r["variant"], r["T"]) for r in rows] == [("plain", 16), ("plain", 64), ("K2 [1,2,1]", 16), ("K2 [1,2,1]", 64)]
    assert {r["chars_seen"] for r in rows} == {3 * 128}  # the same training characters at every T
    assert "--batch-size 8" in rows[0]["command"] and "--batch-size 2" in rows[1]["command"]
    assert "--shorten 2 --shorten-layers 1 2 1" in rows[2]["command"]
    saved = json.loads((tmp_path / "out" / "long_context_context_tiny" / "K2-1-2-1-T64" / "best" / "config.json")
                       .read_text())["model"]
    assert (saved["block_size"], saved["shorten"]) == (64, 2)
    assert all(0 < r["val_bpc"] < 20 and r["train_chars_per_s"] > 0 for r in rows)
    with pytest.raises(SystemExit, match="not a multiple"):
        long_context.main(["context", "--config", str(config), "--data", str(text), "--lengths", "48",
                           "--chars-per-step", "128", "--context-steps", "1", "--out", str(tmp_path / "out")])


def test_encoder_step_times_and_speed_rows(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("".join(f"今天天气很好{i}，我们去公园散步。\n" for i in range(80)), encoding="utf-8")
    common = ["--data", str(text), "--objective", "mlm", "--n-layers", "2", "--n-heads", "2", "--d-model", "16",
              "--block-size", "16", "--batch-size", "4", "--max-steps", "2", "--eval-interval", "2", "--device", "cpu"]
    assert pretrain.main([*common, "--out", str(tmp_path / "plain_mlm")]) == 0
    assert pretrain.main([*common, "--shorten", "2", "--shorten-layers", "1", "1", "0",
                          "--out", str(tmp_path / "short_mlm")]) == 0
    runs = {"plain": tmp_path / "plain", "short": tmp_path / "short"}
    times = encoders.step_times(runs, batch_size=4, steps=1, rounds=3)
    assert len(times["short"]["rounds"]) == 3 and all(t > 0 for t in times["short"]["rounds"])
    assert times["plain"]["speedup_vs_first"] == 1.0  # the reference against itself, every round
    speed = tmp_path / "speed.json"
    speed.write_text(json.dumps({"rows": [
        {"tool": "thulac", "chars_per_s": 100},
        {"label": "short", "dtype": "int8", "batch_size": 64, "chars_per_s": 300, "vs_thulac": 3.0, "f1": 90.0}]}))
    assert encoders.speed_rows(speed, runs) == {
        "plain": [], "short": [{"dtype": "int8", "batch_size": 64, "chars_per_s": 300, "vs_thulac": 3.0, "f1": 90.0}]}
    with pytest.raises(SystemExit, match="no results.json"):
        encoders.load_results(tmp_path / "missing" / "results.json")
