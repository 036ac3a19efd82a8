"""Adapters: small bottleneck MLPs inserted into every block (Houlsby et al. 2019, "Parameter-Efficient
Transfer Learning for NLP").

Each block gets two adapters, one on the output of the attention sublayer (after its projection o_proj) and one
on the output of the MLP sublayer (after fc_out), both before the residual addition::

    h (C) ──────────────────────────────┐
      │                                 │
    down: Linear(C, m)   m = bottleneck │   m << C: 2·C·m + m + C numbers per adapter
      │                                 │
    GELU                                │
      │                                 │
    up: Linear(m, C), zeros at init     │   so the adapter is the identity at step 0
      │                                 │
     (+)────────────────────────────────┘
      │
    h + up(gelu(down(h)))   -> resid dropout -> residual stream

Near-identity initialisation matters: the frozen network must work unchanged when training starts. Houlsby et
al. use near-zero weights; a zero up-projection gives the exact identity (the down-projection then receives
gradient from the second step on, as LoRA's A does). Unlike the paper, the layer norms stay frozen, so the base
weights are never modified and one base can serve many adapters.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .inject import PeftModule, wrap_linears


class Adapter(PeftModule):
    """Bottleneck with residual: ``forward(x, h) = h + up(gelu(down(h)))``; h ``(..., C)``, x is unused (the
    adapter reads the sublayer's output, not its input)."""

    def __init__(self, dim: int, bottleneck: int, *, device=None, dtype=None):
        super().__init__()
        if bottleneck < 1:
            raise ValueError(f"adapter bottleneck must be >= 1, got {bottleneck}")
        self.down = nn.Linear(dim, bottleneck, device=device, dtype=dtype)
        self.up = nn.Linear(bottleneck, dim, device=device, dtype=dtype)
        nn.init.normal_(self.down.weight, std=dim**-0.5)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))


def add_adapters(model: nn.Module, *, bottleneck: int = 16) -> dict:
    """Insert an `Adapter` after the attention and after the MLP of every block. Returns the saved options."""

    def make(linear: nn.Linear) -> Adapter:
        w = linear.weight
        return Adapter(linear.out_features, bottleneck, device=w.device, dtype=w.dtype)

    wrap_linears(model, ["output", "mlp_out"], "adapter", make)
    return {"bottleneck": bottleneck}
