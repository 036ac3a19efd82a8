"""Small builders shared by the tests."""

import torch

from charformer.model import CharTransformer, ModelConfig


def tiny_model(**overrides) -> CharTransformer:
    """A 2-layer model small enough that a forward pass takes a millisecond on a CPU."""
    cfg = dict(vocab_size=50, block_size=32, n_layers=2, n_heads=2, d_model=32, dropout=0.0)
    cfg.update(overrides)
    torch.manual_seed(0)
    return CharTransformer(ModelConfig(**cfg)).eval()
