"""The shared training loop: schedule, parameter groups, non-finite steps, polite interruption."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from charformer.errors import CharformerError
from charformer.train import NoCheckpoints, TrainConfig, fit, lr_at, make_optimizer
from tests.helpers import TINY_MODEL, tiny_model

ROOT = Path(__file__).resolve().parents[1]


def test_lr_schedule_warmup_then_cosine_to_min():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(1e-4)  # first warmup step: lr / warmup_steps
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(0.55e-3)  # halfway through the decay: the midpoint
    assert lr_at(110, cfg) == pytest.approx(1e-4)
    linear = TrainConfig(lr=1e-3, min_lr=0.0, warmup_steps=0, max_steps=100, decay="linear")
    assert lr_at(25, linear) == pytest.approx(0.75e-3)


def test_weight_decay_only_on_matrices_and_lr_scale_groups():
    model = tiny_model()
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1), lr_scale={"blocks.1.": 10.0})
    for group in opt.param_groups:
        dims = {p.dim() for p in group["params"]}
        assert group["weight_decay"] == (0.1 if dims == {2} else 0.0)
    scaled = {id(p) for g in opt.param_groups if g["lr_scale"] == 10.0 for p in g["params"]}
    assert scaled == {id(p) for p in model.blocks[1].parameters()}


class _NaNEvery:
    """A regression objective whose loss is NaN on chosen steps (counted by calls)."""

    metric, higher_is_better = "loss", False

    def __init__(self, bad_calls):
        self.bad_calls, self.calls = set(bad_calls), 0

    def batch(self, generator):
        return (torch.randint(7, 50, (2, 8), generator=generator),)

    def loss(self, model, batch):
        self.calls += 1
        loss = model(batch[0]).float().pow(2).mean()
        return (loss * float("nan") if self.calls in self.bad_calls else loss), batch[0].numel()

    def evaluate(self, model):
        return {"loss": 1.0}

    def report(self, model):
        return None


def test_non_finite_steps_are_skipped_then_stop(tmp_path):
    model = tiny_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(max_steps=4, eval_interval=100, warmup_steps=1, max_bad_steps=2)
    summary = fit(model, _NaNEvery({1, 2}), cfg, tmp_path / "a", NoCheckpoints())
    assert summary["skipped_steps"] == 2 and summary["steps"] == 4
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # the 2 good steps trained

    with pytest.raises(CharformerError, match="non-finite"):
        fit(tiny_model().train(), _NaNEvery({1, 2, 3}), cfg, tmp_path / "b", NoCheckpoints())


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 100)
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "pretrain.py"), "--data", str(corpus), "--out", str(out), "--max-steps", "100000",
           "--eval-interval", "100000", *TINY_MODEL, "--block-size", "16",
           "--batch-size", "2", "--log-interval", "1", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() or (out / "metrics.jsonl").stat().st_size == 0:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "interrupted at step" in err and "--resume" in err
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert 1 <= state["loop"]["step"] < 100000
