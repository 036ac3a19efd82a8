"""Weight averaging: an exponential moving average of the weights, or the mean of the last N checkpoints.

    EMA      shadow <- d_t * shadow + (1 - d_t) * theta    after every optimizer step
    last N   mean of the weights at the last N evaluations (one checkpoint per evaluation)

Averaging the iterates of stochastic optimisation (Polyak & Juditsky 1992) lands nearer the middle of the flat
region that SGD wanders around at the end of training than any single iterate; Izmailov et al. 2018 (SWA)
showed that this generalises better for deep networks, and Vaswani et al. 2017 averaged their last 5 or 20
checkpoints. The EMA follows TensorFlow's ExponentialMovingAverage with ``num_updates``: the decay ramps up as
``d_t = min(decay, (1 + t) / (10 + t))`` at update t (0-based), so the first updates are not dominated by the
starting weights, which matters in a fine-tuning run of a few hundred steps.

Only the trainable parameters are averaged (the rest do not move). The averaged weights are what evaluation
scores, so they decide early stopping and the best checkpoint, and what OUT/best stores (`Averaged`); the
training itself goes on from the raw weights, which OUT/last keeps, with the averager's state beside them for
--resume (`state_tensors`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters that train, by name (tied weights once)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


@contextmanager
def swapped(params: dict[str, nn.Parameter], weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """Within the block, `params` hold `weights` (same names and shapes); their own values come back after."""
    saved = {name: p.detach().clone() for name, p in params.items()}
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved[name])


class EMA:
    """Exponential moving average of `params` (see the module docstring); call `update` after each step."""

    def __init__(self, params: dict[str, nn.Parameter], decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"ema decay must be in (0, 1), got {decay}")
        self.params, self.decay, self.updates = params, decay, 0
        self.shadow = {name: p.detach().float().clone() for name, p in params.items()}

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, p in self.params.items():
            self.shadow[name].mul_(d).add_(p.detach().float(), alpha=1 - d)
        self.updates += 1

    def weights(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"ema.updates": torch.tensor(self.updates), **{f"ema.{k}": v for k, v in self.shadow.items()}}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.updates = int(tensors["ema.updates"])
        for name in self.shadow:
            self.shadow[name].copy_(tensors[f"ema.{name}"])


class LastCheckpoints:
    """The mean of the last `n` snapshots of `params`; `snapshot` takes one (at each evaluation)."""

    def __init__(self, params: dict[str, nn.Parameter], n: int):
        if n < 1:
            raise ValueError(f"average_last must be >= 1, got {n}")
        self.params, self.n = params, n
        self.snapshots: list[dict[str, torch.Tensor]] = []

    def snapshot(self) -> None:
        now = {k: p.detach().float().cpu().clone() for k, p in self.params.items()}
        self.snapshots = [*self.snapshots, now][-self.n :]

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: sum(s[name] for s in self.snapshots) / len(self.snapshots) for name in self.params}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"avg.{i}.{k}": v for i, s in enumerate(self.snapshots) for k, v in s.items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        count = len({key.split(".")[1] for key in tensors if key.startswith("avg.")})
        self.snapshots = [{k: tensors[f"avg.{i}.{k}"] for k in self.params} for i in range(count)]


class Averaged:
    """`objective` evaluated on the averaged weights of `averager` (an `EMA` or `LastCheckpoints`; the latter
    takes its snapshot at each evaluation first). Everything else is the objective's own."""

    def __init__(self, objective, averager: EMA | LastCheckpoints):
        self.objective, self.averager = objective, averager

    def __getattr__(self, name):
        return getattr(self.objective, name)

    def evaluate(self, model) -> dict[str, float]:
        if isinstance(self.averager, LastCheckpoints):
            self.averager.snapshot()
        with swapped(self.averager.params, self.averager.weights()):
            return self.objective.evaluate(model)

    def report(self, model):
        with swapped(self.averager.params, self.averager.weights()):
            return self.objective.report(model)
