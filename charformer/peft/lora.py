"""LoRA: low-rank adaptation of chosen linear layers (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large
Language Models").

The pretrained weight W stays frozen; the layer learns a rank-r update ``ΔW = (alpha / r) · B A``::

    x ──┬──► W (out, in), frozen ─────────────────────────────────┐
        │                                                        (+) ──► y = W x + (alpha/r) · B A dropout(x)
        └──► dropout ──► A (r, in) ──► B (out, r) ──► × alpha/r ──┘
                         trained,      trained,
                         Gaussian      zeros: ΔW = 0 at step 0, so training starts from the base model

Only ``r·(in + out)`` numbers per layer are trained instead of ``in·out``. Dividing by r keeps the update's
size roughly independent of r, so alpha need not be retuned when r changes (the paper's reasoning). After
training, `merge` folds ``(alpha/r) B A`` into W: inference then costs exactly what the base model costs.
Hu et al. adapt the query and value projections by default; any of q/k/v/o and the MLP can be chosen here.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .inject import AdaptedLinear, PeftModule, resolve_targets, wrap_linears


class LoRAUpdate(PeftModule):
    """The low-rank update of one layer: ``forward(x, y) = y + (alpha/r) · B A dropout(x)``.

    x: ``(..., in_features)``, y (the frozen layer's output): ``(..., out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float, *, device=None,
                 dtype=None):
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {r}")
        self.scale = alpha / r
        self.A = nn.Parameter(torch.randn(r, in_features, device=device, dtype=dtype) / in_features**0.5)
        self.B = nn.Parameter(torch.zeros(out_features, r, device=device, dtype=dtype))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y + self.scale * F.linear(F.linear(self.dropout(x), self.A), self.B)

    def delta_weight(self) -> torch.Tensor:
        """``(alpha/r) · B A``, shape ``(out_features, in_features)``."""
        return self.scale * (self.B @ self.A)


def add_lora(model: nn.Module, *, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
             targets=("query", "value")) -> dict:
    """Wrap the `targets` layers of every block with a `LoRAUpdate`. Returns the options as saved (JSON-able)."""
    targets = resolve_targets(targets)

    def make(linear: nn.Linear) -> LoRAUpdate:
        w = linear.weight
        return LoRAUpdate(linear.in_features, linear.out_features, r, alpha, dropout, device=w.device, dtype=w.dtype)

    wrap_linears(model, targets, "lora", make)
    return {"r": r, "alpha": alpha, "dropout": dropout, "targets": targets}


def merge(model: nn.Module) -> None:
    """Fold every LoRA/AdaLoRA update into its weight (for inference; logits unchanged up to rounding)."""
    for m in model.modules():
        if isinstance(m, AdaptedLinear) and m.kind in ("lora", "adalora"):
            m.merge()


def unmerge(model: nn.Module) -> None:
    """Undo `merge`: the base weights come back bit for bit."""
    for m in model.modules():
        if isinstance(m, AdaptedLinear):
            m.unmerge()
