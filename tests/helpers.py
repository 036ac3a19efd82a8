"""Small builders shared by the tests."""

from pathlib import Path

import torch

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
