"""Small builders shared by the tests."""

from pathlib import Path

import torch
import torch.nn.functional as F

from charformer.model import CharTransformer, ModelConfig
from charformer.runlog import read_metrics

# Model options of the scripts' end-to-end tests: one layer, two heads, d_model 32, so a run takes seconds.
TINY_MODEL = ["--n-layers", "1", "--n-heads", "2", "--d-model", "32"]


def tiny_model(**overrides) -> CharTransformer:
    """A 2-layer model small enough that a forward pass takes a millisecond on a CPU."""
    cfg = dict(vocab_size=50, block_size=32, n_layers=2, n_heads=2, d_model=32, dropout=0.0)
    cfg.update(overrides)
    torch.manual_seed(0)
    return CharTransformer(ModelConfig(**cfg)).eval()


def train_losses(out: Path) -> dict[int, float]:
    """The training loss of every logged step of the run in `out` (its metrics.jsonl), by step."""
    return {r["step"]: r["train_loss"] for r in read_metrics(out / "metrics.jsonl") if "train_loss" in r}


def train_next_char(model: torch.nn.Module, x: torch.Tensor, *, steps: int, lr: float) -> list[float]:
    """Train the trainable parameters of `model` with AdamW on next-character prediction over ids `x` (B, T)
    for `steps` full-batch steps; returns each step's loss (nats/char) before its update."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
