"""One entry point for scaled dot-product attention, with interchangeable implementations.

Every implementation follows the masking convention of `kernels.reference` (queries aligned to the end of the
keys, per-sequence key lengths, optional sliding window; rows with no visible key output zeros):

* ``"naive"``: the explicit ``softmax(q k^T / sqrt(D)) v`` of `kernels.reference`, the readable spec. O(T^2) memory.
* ``"fused_softmax"``: the same matmuls around the Triton fused softmax kernel (`kernels.softmax`).
* ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention`` (PyTorch picks a flash / memory-efficient /
  math backend).
* ``"triton"``: our FlashAttention-2 kernel (`kernels.flash_attention`). On a machine without a GPU it runs only
  under the Triton interpreter (``TRITON_INTERPRET=1`` set before import), which is slow and meant for tests.
* ``"local"``: blocked sliding-window attention in plain PyTorch (`charformer.window_attention`), O(T * window)
  memory, differentiable anywhere; needs a window.
* ``"flex"``: ``torch.nn.attention.flex_attention`` with a block mask (`charformer.window_attention`); on the CPU
  inference only (no backward there).
* ``"auto"``: ``"triton"`` on CUDA tensors, ``"sdpa"`` elsewhere.

`decode_attention` is the one exception to the convention: a decoding step over rows of different lengths
(continuous batching), where each row's single query sits at its own last key.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from kernels.reference import attention_reference, visible_keys

from .window_attention import flex_window_attention, local_attention

ATTN_IMPLS = ("auto", "sdpa", "naive", "fused_softmax", "triton", "local", "flex")


def resolve_impl(impl: str, device: torch.device) -> str:
    """Turn ``"auto"`` into a concrete implementation for `device`; raise ValueError on an unknown name or on
    a Triton implementation that cannot run here."""
    if impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {impl!r}")
    if impl == "auto":
        return "triton" if device.type == "cuda" else "sdpa"
    if impl in ("triton", "fused_softmax") and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"attn_impl={impl!r} needs a CUDA device, or TRITON_INTERPRET=1 set before start-up to run the Triton "
            "kernels on the CPU (slow; for testing)"
        )
    return impl


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    key_lengths: torch.Tensor | None = None,
    window: int | None = None,
    impl: str = "sdpa",
) -> torch.Tensor:
    """Multi-head attention core. q ``(B, H, Tq, D)``, k/v ``(B, H, Tk, D)``, Tq <= Tk; key_lengths ``(B,)``
    int or None. Returns ``(B, H, Tq, D)`` in q's dtype. Scale is ``1/sqrt(D)``. Raises ValueError for
    ``impl="local"`` without a window, and for ``impl="flex"`` when a CPU backward pass would be needed."""
    impl = resolve_impl(impl, q.device)
    if impl == "local":
        if window is None:
            raise ValueError("attn_impl='local' is sliding-window attention: set a window")
        return local_attention(q, k, v, causal=causal, window=window, key_lengths=key_lengths)
    if impl == "flex":
        return flex_window_attention(q, k, v, causal=causal, window=window, key_lengths=key_lengths)
    if impl == "naive":
        return attention_reference(q, k, v, causal=causal, key_lengths=key_lengths, window=window)[0]
    if impl == "triton":
        from kernels.flash_attention import flash_attention

        return flash_attention(q, k, v, causal=causal, key_lengths=key_lengths, window=window)
    if impl == "fused_softmax":
        return _fused_softmax_attention(q, k, v, causal=causal, key_lengths=key_lengths, window=window)
    return _sdpa(q, k, v, causal=causal, key_lengths=key_lengths, window=window)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, key_lengths: torch.Tensor,
                     window: int | None = None) -> torch.Tensor:
    """Causal attention of one new query per row over a ragged batch (continuous batching). q ``(B, H, 1, D)``,
    k/v ``(B, H, Tk, D)``, key_lengths ``(B,)`` int64, each >= 1. Row b's query is its key
    ``key_lengths[b] - 1`` (not the last key, as in `attention`'s convention) and sees keys
    ``0 .. key_lengths[b] - 1``, the last `window` of them with a window. Returns ``(B, H, 1, D)`` (SDPA with a
    key mask, whatever the model's attn_impl: one query per row needs no kernel of its own)."""
    pos = torch.arange(k.shape[-2], device=k.device)
    lengths = key_lengths.to(k.device)[:, None]  # (B, 1)
    visible = pos < lengths  # (B, Tk)
    if window is not None:
        visible &= pos >= lengths - window
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible[:, None, None, :])


def _sdpa(q, k, v, *, causal, key_lengths, window):
    tq, tk = q.shape[-2], k.shape[-2]
    if key_lengths is None and window is None and (not causal or tq == tk):
        # The common training case: let PyTorch use its fused kernels with no mask tensor at all.
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    if key_lengths is not None and window is None and not causal:
        return _sdpa_padded(q, k, v, key_lengths)
    mask = visible_keys(tq, tk, causal=causal, key_lengths=key_lengths, window=window, device=q.device)
    has_key = mask.any(dim=-1, keepdim=True)  # (B|1, 1, Tq, 1)
    # A row with no visible key would be 0/0 = NaN inside SDPA, and NaN poisons the backward pass even where the
    # output is discarded; so such rows attend to everything and are then zeroed.
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~has_key)
    return out.masked_fill(~has_key, 0.0)


def _sdpa_padded(q, k, v, key_lengths):
    """Bidirectional attention over right-padded sequences (an encoder's batches): a ``(B, 1, 1, Tk)`` key mask,
    and the query rows past each length zeroed afterwards. The same result as the full ``(B, 1, Tq, Tk)`` mask of
    `visible_keys`, built in O(B T) instead of O(B T^2) per layer."""
    tq, tk = q.shape[-2], k.shape[-2]
    pos = torch.arange(tk, device=q.device)
    lengths = key_lengths.to(q.device)[:, None]  # (B, 1)
    key_ok = (pos < lengths) | (lengths == 0)  # an empty sequence attends to its padding (no 0/0), zeroed below
    # An additive mask (0 / -inf in q's dtype) rather than a boolean one: the same result, but PyTorch's CPU
    # kernel skips converting the mask per block (measured 1.7x faster at B=64, T=128, one thread).
    key_bias = torch.zeros(key_ok.shape, dtype=q.dtype, device=q.device).masked_fill(~key_ok, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_bias[:, None, None, :])
    query_ok = pos[tk - tq :] < lengths  # (B, Tq): queries are aligned to the end of the keys
    return out.masked_fill(~query_ok[:, None, :, None], 0.0)


def _fused_softmax_attention(q, k, v, *, causal, key_lengths, window):
    from kernels.softmax import fused_softmax

    scores = q @ k.transpose(-2, -1)  # (B, H, Tq, Tk)
    if key_lengths is not None or window is not None:
        mask = visible_keys(q.shape[-2], k.shape[-2], causal=causal, key_lengths=key_lengths, window=window, device=q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = fused_softmax(scores, scale=q.shape[-1] ** -0.5, causal=causal)
    return probs @ v
