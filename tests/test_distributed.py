"""Two CPU processes under torchrun (gloo) follow the loss curve of one process with the same global batch:
pretrain.py, and finetune.py (word segmentation)."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import finetune
from charformer.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # nats: only the order of float summation differs between the two runs


def _losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in records if "train_loss" in r}


def test_two_gloo_ranks_match_one_process(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"{i}: 天下大势，分久必合，合久必分。All the world's a stage.\n" for i in range(200)))
    common = ["--data", str(corpus), "--max-steps", "30", "--eval-interval", "15", "--n-layers", "2", "--n-heads", "2",
              "--d-model", "32", "--block-size", "32", "--log-interval", "1", "--device", "cpu", "--dropout", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(ROOT / "pretrain.py"), *common, "--batch-size", "8", "--out", str(tmp_path / "one")],
                   check=True, env=env, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*torchrun, str(ROOT / "pretrain.py"), *common, "--batch-size", "4", "--out", str(tmp_path / "two")],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 per rank x 2 ranks x 1 accumulation = 8" in proc.stdout

    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(two) == list(range(1, 31))
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=TOLERANCE), step
    r1 = json.loads((tmp_path / "one" / "results.json").read_text())
    r2 = json.loads((tmp_path / "two" / "results.json").read_text())
    assert r2["val_loss"] == pytest.approx(r1["val_loss"], abs=TOLERANCE)
    assert r2["world_size"] == 2 and r2["effective_batch"] == 8
    model, _, meta = load_checkpoint(tmp_path / "two")  # written by rank 0, loads in a plain single process
    assert meta["world_size"] == 2 and model.num_params() > 0


def _cws_file(path: Path, n: int, seed: int) -> str:
    """`n` segmented sentences of exactly 8 characters each (random words of 1-3 characters)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        chars = [rng.choice("中国人民站起来了我们北京天安门，。") for _ in range(8)]
        cuts = sorted(rng.sample(range(1, 8), 3))
        lines.append(" ".join("".join(chars[a:b]) for a, b in zip([0, *cuts], [*cuts, 8])))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_finetune_two_gloo_ranks_match_one_process(tmp_path):
    # Every sentence has 8 characters, so the two ranks' slices hold as many characters each: the tagging loss (a
    # mean over characters) averaged over ranks, as DDP averages gradients, is then exactly the global mean.
    files = {split: _cws_file(tmp_path / f"{split}.txt", n, seed) for split, n, seed in
             (("train", 40, 0), ("dev", 8, 1), ("test", 8, 2))}
    common = ["--task", "cws", "--train", files["train"], "--dev", files["dev"], "--test", files["test"], "--init",
              "scratch", "--max-steps", "20", "--eval-interval", "10", "--n-layers", "2", "--n-heads", "2", "--d-model",
              "32", "--block-size", "16", "--log-interval", "1", "--device", "cpu", "--dropout", "0", "--head-dropout", "0"]
    assert finetune.main([*common, "--batch-size", "8", "--out", str(tmp_path / "one")]) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*torchrun, str(ROOT / "finetune.py"), *common, "--batch-size", "4", "--out", str(tmp_path / "two")],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("effective batch: 4 per rank x 2 ranks x 1 accumulation = 8") == 1  # rank 0 alone prints

    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(two) == list(range(1, 21))
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=TOLERANCE), step
    r1 = json.loads((tmp_path / "one" / "results.json").read_text())
    r2 = json.loads((tmp_path / "two" / "results.json").read_text())
    # scores differ by ~1e-7, far from any tie between tags: the same words are predicted
    assert (r2["dev_best_f1"], r2["test_after"]["f1"]) == (r1["dev_best_f1"], r1["test_after"]["f1"])
    assert (r2["world_size"], r2["effective_batch"], r2["epochs"]) == (2, 8, r1["epochs"])
