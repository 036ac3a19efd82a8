"""Attention head pruning by gradient importance (Michel, Levy & Neubig 2019, "Are Sixteen Heads Really Better
than One?", section 4).

Put a gate ξ_h on every head's output, just before the layer's output projection; at ξ = 1 the model is
unchanged:

    y_h (B, T, D) ──× ξ_h──┐
    ...                    ├─ concat (B, T, H*D) ── o_proj ── + residual
    y_H (B, T, D) ──× ξ_H──┘

A head's importance is the expected size of the loss's gradient with respect to its gate,
``I_h = E |∂L/∂ξ_h|``, the first-order estimate of what the loss changes by when the head is removed
(ξ_h = 0). As in the authors' code, the expectation is over dev batches (the absolute gradient of each batch's
loss, averaged), and each layer's scores are divided by their L2 norm before heads are ranked across layers,
since layers differ in scale. The least important heads are then removed for real: their rows of the q/k/v
projections and their columns of the output projection are cut out, so the pruned model is smaller and
faster, and computes exactly what the original computes with those gates at 0 (`tests/test_prune.py`).
Every layer keeps at least one head (its config's ``layer_heads``, `charformer.model.ModelConfig`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Callable, Iterable, Iterator

import torch
import torch.nn as nn

from .model import CharTransformer


@contextmanager
def head_gates(body: CharTransformer, gates: list[torch.Tensor]) -> Iterator[None]:
    """While inside, multiply head h of layer i by ``gates[i][h]`` (``gates[i]``: ``(H_i,)`` float, on the
    model's device) before layer i's output projection."""

    def gate_hook(gate: torch.Tensor):
        def hook(module, args):
            y = args[0]  # (B, T, H*D)
            return ((y.unflatten(-1, (len(gate), -1)) * gate[:, None].to(y.dtype)).flatten(-2), *args[1:])
        return hook

    handles = [block.attn.o_proj.register_forward_pre_hook(gate_hook(gate)) for block, gate in zip(body.blocks, gates)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def head_importance(model: nn.Module, body: CharTransformer, loss_of: Callable[[object], torch.Tensor],
                    batches: Iterable) -> list[torch.Tensor]:
    """``I_h = mean over batches of |∂ loss_of(batch) / ∂ξ_h|`` for every head, one ``(H_i,)`` float32 tensor per
    layer (not normalised). `model` contains `body`, and is put in eval mode (no dropout). Raises ValueError
    when `batches` is empty."""
    model.eval()
    device = body.tok_emb.weight.device
    gates = [torch.ones(block.attn.n_heads, device=device, requires_grad=True) for block in body.blocks]
    totals = [torch.zeros(block.attn.n_heads, device=device) for block in body.blocks]
    n = 0
    with head_gates(body, gates):
        for batch in batches:
            for total, grad in zip(totals, torch.autograd.grad(loss_of(batch), gates)):
                total += grad.abs()
            n += 1
    if not n:
        raise ValueError("head importance needs at least one batch")
    return [(total / n).cpu() for total in totals]


def heads_to_drop(importance: list[torch.Tensor], n_drop: int) -> dict[int, list[int]]:
    """The `n_drop` heads of lowest layer-normalised importance, as {layer: sorted heads}, each layer keeping at
    least one head. Raises ValueError when that many cannot go."""
    can_go = sum(len(scores) - 1 for scores in importance)
    if not 0 <= n_drop <= can_go:
        raise ValueError(f"can drop 0..{can_go} heads (every layer keeps one), asked for {n_drop}")
    ranked = sorted((float(s) / max(float(scores.norm()), 1e-12), layer, head)
                    for layer, scores in enumerate(importance) for head, s in enumerate(scores))
    drop: dict[int, list[int]] = {}
    for _, layer, head in ranked:
        if n_drop == sum(map(len, drop.values())):
            break
        if len(drop.get(layer, [])) < len(importance[layer]) - 1:
            drop.setdefault(layer, []).append(head)
    return {layer: sorted(heads) for layer, heads in sorted(drop.items())}


@torch.no_grad()
def remove_heads(body: CharTransformer, drop: dict[int, list[int]]) -> None:
    """Cut the heads `drop` ({layer: heads}) out of `body` in place: q/k/v projections ``(C, H*D) -> (C, H'*D)``,
    output projection ``(H*D, C) -> (H'*D, C)``, and ``cfg.layer_heads``. Raises ValueError for projections that
    are not plain ``nn.Linear`` (fused for inference, or wrapped by an adapter method: prune the full model)."""
    d = body.cfg.head_dim
    for layer, heads in drop.items():
        attn = body.blocks[layer].attn
        projs = [getattr(attn, name, None) for name in ("q_proj", "k_proj", "v_proj", "o_proj")]
        if any(type(p) is not nn.Linear for p in projs):
            raise ValueError(f"layer {layer}: head pruning needs plain q/k/v/o projections (not fused or adapted)")
        keep = [h for h in range(attn.n_heads) if h not in set(heads)]
        rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep]).to(projs[0].weight.device)
        for name, proj in zip(("q_proj", "k_proj", "v_proj"), projs):
            setattr(attn, name, _linear(proj.weight[rows]))  # (H'*D, C): the kept heads' output rows
        attn.o_proj = _linear(projs[3].weight[:, rows])  # (C, H'*D): the kept heads' input columns
        attn.n_heads = len(keep)
    body.cfg = replace(body.cfg, layer_heads=[block.attn.n_heads for block in body.blocks])


def _linear(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    layer.weight.copy_(weight)
    return layer
