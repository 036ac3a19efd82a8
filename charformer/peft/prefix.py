"""Prefix tuning: learned keys and values in front of every layer's attention (Li & Liang 2021, "Prefix-Tuning:
Optimizing Continuous Prompts for Generation").

Each layer gets P extra key/value positions, the same for every sequence; every real query may attend to them,
the base weights stay frozen::

    keys    [ Pk_1 .. Pk_P | k_1 k_2 ... k_T ]     Pk, Pv: (H, P, D) per layer, trained
    values  [ Pv_1 .. Pv_P | v_1 v_2 ... v_T ]     k, v:   computed by the frozen model
    query i sees all P prefix positions and, if causal, k_1 .. k_i

How it fits the attention code: `kernels.reference` aligns queries to the *end* of the keys, so with
Tk = P + T the causal mask already lets query i see the P prefix keys and real keys 1..i, and padding works by
growing every sequence's key length by P. That holds for every implementation ("sdpa", "naive",
"fused_softmax", "triton"), so nothing here depends on which one runs. With a KV cache the prefix is prepended
after the cache, which therefore holds only real positions: cached generation works unchanged
(`charformer.generate`).

No rotary embedding is applied to the prefix keys. RoPE exists to make a score depend on the offset between two
real positions; a prefix key has no position in the text. An unrotated key is what a key at position 0 looks
like (R(0) = I), and since R(n) is invertible, any rotation the key could receive is one the learned vector can
absorb: nothing is lost. It also leaves the real positions at 0..T-1, so the prefix uses none of the
block_size budget nor the RoPE tables.

Reparameterisation: optimising the prefix directly is unstable (the paper's finding); Li & Liang train it as
``MLP(E)`` from a smaller embedding E and keep only the MLP's output. With `reparam_hidden` each layer's prefix
is ``Linear(h, 2C)(tanh(Linear(C, h)(E)))`` with E ``(P, C)``; `fold_prefix` (and every saved adapter) keeps just
the resulting tensors. One MLP per layer here, where the paper shares one across layers: the point of it, a
smoother optimisation, does not need the sharing, and each layer stays self-contained.

Unlike LoRA or adapters, a prefix is never the identity at step 0: P more keys take part of every softmax. The
paper initialises it from real-word activations for that reason; here it starts small and random.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .inject import PeftModule


class PrefixKV(PeftModule):
    """P learned key/value positions for one attention layer.

    ``forward(k, v, lengths)``: k/v ``(B, H, Tk, D)`` -> ``(B, H, P + Tk, D)`` (prefix cast to k's dtype),
    lengths ``(B,)`` int -> lengths + P, or None -> None.
    """

    def __init__(self, n_heads: int, head_dim: int, n_prefix: int, reparam_hidden: int | None = None, *,
                 device=None, dtype=None):
        super().__init__()
        if n_prefix < 1:
            raise ValueError(f"prefix length must be >= 1, got {n_prefix}")
        self.n_heads, self.head_dim, self.n_prefix = n_heads, head_dim, n_prefix
        dim = n_heads * head_dim
        kw = dict(device=device, dtype=dtype)
        if reparam_hidden is None:
            self.key = nn.Parameter(0.02 * torch.randn(n_heads, n_prefix, head_dim, **kw))
            self.value = nn.Parameter(0.02 * torch.randn(n_heads, n_prefix, head_dim, **kw))
        else:
            self.embed = nn.Parameter(0.02 * torch.randn(n_prefix, dim, **kw))
            self.mlp = nn.Sequential(nn.Linear(dim, reparam_hidden, **kw), nn.Tanh(),
                                     nn.Linear(reparam_hidden, 2 * dim, **kw))

    def kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefix keys and values, each ``(H, P, D)``."""
        if not hasattr(self, "mlp"):
            return self.key, self.value
        k, v = self.mlp(self.embed).chunk(2, dim=-1)  # each (P, C)
        return self._heads(k), self._heads(v)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return t.view(self.n_prefix, self.n_heads, self.head_dim).transpose(0, 1)  # (P, C) -> (H, P, D)

    def forward(self, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor | None):
        pk, pv = self.kv()
        B = k.shape[0]
        k = torch.cat([pk.to(k.dtype).expand(B, -1, -1, -1), k], dim=2)
        v = torch.cat([pv.to(v.dtype).expand(B, -1, -1, -1), v], dim=2)
        return k, v, None if lengths is None else lengths + self.n_prefix

    def export(self) -> dict[str, torch.Tensor]:
        """Always the plain ``key``/``value`` tensors: a saved prefix needs no MLP."""
        k, v = self.kv()
        return {"key": k.detach().contiguous(), "value": v.detach().contiguous()}

    @torch.no_grad()
    def fold(self) -> None:
        """Replace the reparameterisation MLP by the tensors it produces (inference needs nothing else)."""
        if hasattr(self, "mlp"):
            k, v = self.kv()
            del self.mlp, self.embed
            self.key, self.value = nn.Parameter(k.contiguous()), nn.Parameter(v.contiguous())


def add_prefix(model: nn.Module, *, n_prefix: int = 16, reparam_hidden: int | None = None) -> dict:
    """Give every attention layer of `model` a `PrefixKV`. Returns the saved options (a saved prefix is always
    folded, so `reparam_hidden` is recorded as None). Raises ValueError for a sliding-window model: the prefix
    keys sit before position 0, so they would fall out of the window of every query from ``window - P`` on."""
    if model.cfg.window is not None:
        raise ValueError("prefix tuning is not supported with sliding-window attention (window is set)")
    cfg = model.cfg
    w = model.tok_emb.weight
    for block in model.blocks:
        if block.attn.kv_prefix is not None:
            raise ValueError("the model already has a prefix; remove the method first")
        block.attn.kv_prefix = PrefixKV(block.attn.n_heads, cfg.head_dim, n_prefix, reparam_hidden, device=w.device,
                                        dtype=w.dtype)
    return {"n_prefix": n_prefix, "reparam_hidden": None}


def fold_prefix(model: nn.Module) -> None:
    """Fold every layer's reparameterised prefix into plain tensors (see `PrefixKV.fold`)."""
    for block in model.blocks:
        if block.attn.kv_prefix is not None:
            block.attn.kv_prefix.fold()


def remove_prefix(model: nn.Module) -> None:
    """Take the prefixes out: the model computes exactly what the base model computes."""
    for block in model.blocks:
        block.attn.kv_prefix = None
