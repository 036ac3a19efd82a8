"""Sliding-window attention in O(T * window) memory: blocked local attention in plain PyTorch, and FlexAttention.

With a window of W characters, query i sees keys i-W+1 .. i (and, bidirectional, up to i+W-1). A dense (T, T)
mask computes and stores T^2 scores of which only about T*W (2*T*W) are visible. Blocked local attention (the
"local attention" of Parmar et al. 2018, Image Transformer, and of Longformer's sliding window, Beltagy et al.
2020) cuts the absolute positions into blocks of W::

    keys      | block b-1 | block b | block b+1 |        (zeros stand in for blocks before 0 or after the end)
    queries             | block b |

Every query of block b finds all its visible keys in blocks b-1 and b (and b+1 when bidirectional), so each block
of W queries scores 2W (3W) keys, with the exact mask of `kernels.reference` applied inside: O(T * W) scores,
differentiable with ordinary autograd on any device. Queries are aligned to the end of the keys (Tq <= Tk), so
only the key blocks the queries need are gathered: one decoding step costs O(W), not O(Tk).

`flex_window_attention` computes the same with ``torch.nn.attention.flex_attention`` and a block mask, which
skips the tiles outside the window. torch 2.13 compiles it for the CPU but has no CPU backward: on the CPU it is
for inference, and a call that would need a gradient raises ValueError (train with ``attn_impl="local"``). Without
``torch.compile`` (`FLEX_COMPILE` off) PyTorch runs its unfused reference, which is O(T^2): the tests use that.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F


def _key_blocks(x: torch.Tensor, w: int, n_blocks: int, first: int, span: int) -> torch.Tensor:
    """Keys or values x ``(B, H, Tk, D)`` as ``(B, H, nq, span*W, D)``: for query block i (absolute block
    first+i), the `span` key blocks first+i-1 .. first+i+span-2, zeros outside 0..Tk-1."""
    B, H, tk, D = x.shape
    padded = F.pad(x, (0, 0, w, (n_blocks + 1) * w - tk))  # one block of zeros in front, zeros after the end
    blocks = padded.view(B, H, n_blocks + 2, w, D)
    nq = n_blocks - first
    return torch.cat([blocks[:, :, first + j : first + j + nq] for j in range(span)], dim=3)


def _fold(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, nq, L, D)`` -> ``(B*nq, H, L, D)``: query blocks into the batch dimension."""
    return x.transpose(1, 2).flatten(0, 1)


def local_attention(q, k, v, *, causal: bool, window: int, key_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Exact sliding-window attention, blocked (see module docstring). q ``(B, H, Tq, D)``, k/v ``(B, H, Tk, D)``,
    Tq <= Tk, window >= 1, key_lengths ``(B,)`` int or None. Returns ``(B, H, Tq, D)`` in q's dtype, equal to
    `kernels.reference.attention_reference` with the same arguments (rows with no visible key are zero).
    Raises ValueError when Tq > Tk or window < 1."""
    B, H, tq, D = q.shape
    tk = k.shape[2]
    if tq > tk:
        raise ValueError(f"query length {tq} exceeds key length {tk}; queries are aligned to the end of the keys")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    w, offset = window, tk - tq
    n_blocks, first = -(-tk // w), offset // w  # key blocks; the first block holding a query
    nq, span = n_blocks - first, 2 if causal else 3
    lead = offset - first * w  # positions of the first query block before the first query
    qb = F.pad(q, (0, 0, lead, n_blocks * w - tk)).view(B, H, nq, w, D)
    kb, vb = (_key_blocks(x, w, n_blocks, first, span) for x in (k, v))  # (B, H, nq, span*W, D)

    q_pos = (first + torch.arange(nq, device=q.device))[:, None] * w + torch.arange(w, device=q.device)  # (nq, W)
    k_pos = q_pos[:, :1] - w + torch.arange(span * w, device=q.device)  # (nq, span*W)
    delta = q_pos[:, :, None] - k_pos[:, None, :]  # (nq, W, span*W): query minus key position
    mask = (delta < w) & (delta > -w) & (k_pos[:, None, :] >= 0)
    if causal:
        mask &= delta >= 0
    limit = torch.full((B,), tk, device=q.device) if key_lengths is None else key_lengths.to(q.device).clamp(max=tk)
    limit = limit[:, None, None, None]  # (B, 1, 1, 1)
    mask = mask & (k_pos[None, :, None, :] < limit) & (q_pos[None, :, :, None] < limit)  # (B, nq, W, span*W)
    has_key = mask.any(dim=-1, keepdim=True)
    # As in the SDPA path: a row with no visible key attends to everything (no 0/0), and is zeroed afterwards.
    mask = (mask | ~has_key)[:, None]  # (B, 1, nq, W, span*W)

    # Each query block is an independent attention problem: fold the blocks into the batch, (B*nq, H, ., D), and
    # let SDPA's fused CPU/GPU kernels do it (about 3x faster than softmax(q k^T) v written out on this CPU, and
    # they keep no (W, span*W) probabilities for the backward pass).
    out = F.scaled_dot_product_attention(_fold(qb), _fold(kb), _fold(vb), attn_mask=_fold(mask))  # (B*nq, H, W, D)
    out = out.unflatten(0, (B, nq)).transpose(1, 2).masked_fill(~has_key[:, None], 0.0)  # (B, H, nq, W, D)
    return out.reshape(B, H, nq * w, D)[:, :, lead : lead + tq]


FLEX_COMPILE = os.environ.get("CHARFORMER_FLEX_COMPILE", "1") != "0"


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if FLEX_COMPILE else flex_attention


def flex_window_attention(q, k, v, *, causal: bool, window: int | None, key_lengths: torch.Tensor | None = None):
    """The mask of `kernels.reference` as a FlexAttention block mask (window may be None: full attention).
    Shapes as `local_attention`. Raises ValueError when a gradient would be needed on the CPU (torch has no CPU
    backward for FlexAttention)."""
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError("attn_impl='flex' has no backward pass on the CPU in this torch; "
                         "train with attn_impl='local' (or run flex under torch.no_grad())")
    B, H, tq, D = q.shape
    tk = k.shape[2]
    if key_lengths is None:
        block_mask = _shared_block_mask(tq, tk, causal, window, q.device)
    else:
        lengths = key_lengths.to(q.device).clamp(max=tk)
        block_mask = _block_mask(tq, tk, causal, window, q.device, lengths)
    out = _compiled_flex()(q, k, v, block_mask=block_mask)
    if key_lengths is None:
        return out
    # The only rows with no visible key are those at or past their sequence's length (every other query sees at
    # least itself); the reference outputs zeros there. (Compiled FlexAttention on the CPU cannot return the lse
    # that would tell them apart.)
    query_ok = torch.arange(tq, device=q.device)[None, :] + (tk - tq) < lengths[:, None]  # (B, Tq)
    return out.masked_fill(~query_ok[:, None, :, None], 0.0)


def _block_mask(tq: int, tk: int, causal: bool, window: int | None, device, lengths: torch.Tensor | None):
    """The FlexAttention BlockMask of `kernels.reference`'s mask; lengths ``(B,)`` or None (one mask for all)."""
    from torch.nn.attention.flex_attention import create_block_mask

    offset = tk - tq

    def visible(b, h, qi, kj):
        p = qi + offset
        ok = (kj <= p) if causal else (kj >= 0)
        if window is not None:
            ok = ok & (p - kj < window) & ((kj - p < window) | causal)
        if lengths is not None:
            ok = ok & (kj < lengths[b]) & (p < lengths[b])
        return ok

    batch = None if lengths is None else lengths.shape[0]
    return create_block_mask(visible, batch, None, tq, tk, device=device, _compile=FLEX_COMPILE)


@functools.lru_cache(maxsize=16)
def _shared_block_mask(tq: int, tk: int, causal: bool, window: int | None, device):
    """`_block_mask` without lengths, built once per shape: every layer and step of a model shares it (building
    one evaluates the mask over all Tq x Tk pairs)."""
    return _block_mask(tq, tk, causal, window, device, None)
