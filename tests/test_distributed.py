"""Two CPU processes under torchrun (gloo), with DDP or FSDP, follow the loss curve of one process with the same
global batch: pretrain.py, and finetune.py (word segmentation); FSDP and single-process checkpoints resume under
either."""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import finetune
from charformer.checkpoint import load_checkpoint
from tests.helpers import train_losses

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # nats: only the order of float summation differs between the two runs


def _two_ranks(script: str, args: list[str]) -> str:
    """Run `script` (at the repository root) with `args` as 2 gloo ranks under torchrun; returns its stdout."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*torchrun, str(ROOT / script), *args], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _same_curve(one: Path, two: Path, steps: int) -> tuple[dict, dict]:
    """Assert that run `two` logged every step 1..steps with run `one`'s training loss (within TOLERANCE);
    returns the two runs' results.json."""
    losses_one, losses_two = train_losses(one), train_losses(two)
    assert sorted(losses_two) == list(range(1, steps + 1))
    for step in losses_one:
        assert losses_two[step] == pytest.approx(losses_one[step], abs=TOLERANCE), step
    return json.loads((one / "results.json").read_text()), json.loads((two / "results.json").read_text())


def _one_process(script: str, args: list[str]) -> None:
    subprocess.run([sys.executable, str(ROOT / script), *args], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})


def _pretrain_args(tmp_path: Path, steps: int) -> list[str]:
    corpus = tmp_path / "c.txt"
    if not corpus.exists():
        corpus.write_text("".join(f"{i}: 天下大势，分久必合，合久必分。All the world's a stage.\n" for i in range(200)))
    return ["--data", str(corpus), "--max-steps", str(steps), "--eval-interval", "15", "--n-layers", "2", "--n-heads",
            "2", "--d-model", "32", "--block-size", "32", "--log-interval", "1", "--device", "cpu", "--dropout", "0"]


@pytest.mark.parametrize("strategy", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_two_gloo_ranks_match_one_process(tmp_path, strategy):
    # Two micro-batches per step: gradients are reduced across ranks after the second only (no_sync / FSDP's
    # requires_gradient_sync), and the sum is still the gradient of the global batch.
    common = _pretrain_args(tmp_path, 30)
    _one_process("pretrain.py", [*common, "--batch-size", "8", "--out", str(tmp_path / "one")])
    stdout = _two_ranks("pretrain.py", [*common, *strategy, "--batch-size", "2", "--grad-accum", "2", "--out",
                                        str(tmp_path / "two")])
    assert "2 per rank x 2 ranks x 2 accumulation = 8" in stdout

    r1, r2 = _same_curve(tmp_path / "one", tmp_path / "two", 30)
    assert r2["val_loss"] == pytest.approx(r1["val_loss"], abs=TOLERANCE)
    assert r2["world_size"] == 2 and r2["effective_batch"] == 8
    model, _, meta = load_checkpoint(tmp_path / "two")  # written by rank 0, loads in a plain single process
    assert meta["world_size"] == 2 and model.num_params() > 0


def test_fsdp_and_single_process_checkpoints_resume_under_either(tmp_path):
    # Both runs stop after 30 steps; each checkpoint (weights, optimizer moments, RNG states) is resumed for 10
    # more steps by the other strategy and by one process. FSDP writes gathered tensors and reads them back into
    # its shards, so all three continuations follow one curve.
    _one_process("pretrain.py", [*_pretrain_args(tmp_path, 30), "--batch-size", "8", "--out", str(tmp_path / "one")])
    _two_ranks("pretrain.py", [*_pretrain_args(tmp_path, 30), "--fsdp", "--batch-size", "4", "--out", str(tmp_path / "fsdp")])
    runs = {"one_in_one": ("one", False), "one_in_fsdp": ("one", True), "fsdp_in_one": ("fsdp", False)}
    for name, (source, fsdp) in runs.items():
        shutil.copytree(tmp_path / source, tmp_path / name)
        more = [*_pretrain_args(tmp_path, 40), "--resume", "--out", str(tmp_path / name)]
        if fsdp:
            _two_ranks("pretrain.py", [*more, "--fsdp", "--batch-size", "4"])
        else:
            _one_process("pretrain.py", [*more, "--batch-size", "8"])
    _same_curve(tmp_path / "one_in_one", tmp_path / "one_in_fsdp", 40)
    _same_curve(tmp_path / "one_in_one", tmp_path / "fsdp_in_one", 40)


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


@pytest.mark.parametrize("strategy", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_finetune_two_gloo_ranks_match_one_process(tmp_path, strategy):
    # The tagging loss is a character sum over (rows x mean piece length), so DDP's average over ranks is exactly
    # the one-process loss of the global batch.
    files = {split: _cws_file(tmp_path / f"{split}.txt", n, seed) for split, n, seed in
             (("train", 40, 0), ("dev", 8, 1), ("test", 8, 2))}
    common = ["--task", "cws", "--train", files["train"], "--dev", files["dev"], "--test", files["test"], "--init",
              "scratch", "--max-steps", "20", "--eval-interval", "10", "--n-layers", "2", "--n-heads", "2", "--d-model",
              "32", "--block-size", "16", "--log-interval", "1", "--device", "cpu", "--dropout", "0", "--head-dropout", "0"]
    assert finetune.main([*common, "--batch-size", "8", "--out", str(tmp_path / "one")]) == 0
    stdout = _two_ranks("finetune.py", [*common, *strategy, "--batch-size", "4", "--out", str(tmp_path / "two")])
    assert stdout.count("effective batch: 4 per rank x 2 ranks x 1 accumulation = 8") == 1  # rank 0 alone prints

    r1, r2 = _same_curve(tmp_path / "one", tmp_path / "two", 20)
    # scores differ by ~1e-7, far from any tie between tags: the same words are predicted
    assert (r2["dev_best_f1"], r2["test_after"]["f1"]) == (r1["dev_best_f1"], r1["test_after"]["f1"])
    assert (r2["world_size"], r2["effective_batch"], r2["epochs"]) == (2, 8, r1["epochs"])
