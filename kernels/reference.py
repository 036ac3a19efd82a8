"""Plain PyTorch references for every kernel in `kernels/`: the readable specification.

Each Triton kernel in this package computes exactly what a function here computes, only faster; the tests
compare the two in fp32. These functions favour clarity over speed: they materialise the full (Tq, Tk)
score matrix, so their memory grows as T^2.

Masking convention shared by every attention implementation in the project
-------------------------------------------------------------------------
q has Tq rows, k and v have Tk rows, Tq <= Tk. Query row i sits at absolute position
``p_i = i + (Tk - Tq)``: the query block is aligned to the *end* of the keys, so the last query sees every key.
This is what cached decoding (one new query, all cached keys) and prefix tuning (extra learned keys in front)
need. Key j is visible to query i when all of these hold:

* ``j < key_lengths[b]``                (key padding; sequences are right-padded)
* ``j <= p_i``                          (only when ``causal``)
* ``p_i - j < window``                  (only when ``window`` is set: ``window`` keys to the left, itself included)
* ``j - p_i < window``                  (only when ``window`` is set and not ``causal``)

A query row with no visible key (a padded row, ``p_i >= key_lengths[b]``, or length 0) outputs zeros and has
``lse = -inf``; it never produces NaN.
"""

from __future__ import annotations

import math

import torch


def visible_keys(
    tq: int,
    tk: int,
    *,
    causal: bool,
    key_lengths: torch.Tensor | None = None,
    window: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Boolean mask of which keys each query may attend to, following the module's convention.

    Returns a bool tensor of shape ``(B, 1, tq, tk)`` when ``key_lengths`` (int, shape ``(B,)``) is given, else
    ``(1, 1, tq, tk)``; True means "visible". Query rows past their sequence length are all False.

    Raises ValueError if ``tq > tk`` or ``window < 1``.
    """
    if tq > tk:
        raise ValueError(f"query length {tq} exceeds key length {tk}; queries are aligned to the end of the keys")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
    pos_q = torch.arange(tq, device=device)[:, None] + (tk - tq)  # (tq, 1) absolute positions
    pos_k = torch.arange(tk, device=device)[None, :]  # (1, tk)
    mask = torch.ones(tq, tk, dtype=torch.bool, device=device)
    if causal:
        mask &= pos_k <= pos_q
    if window is not None:
        mask &= (pos_q - pos_k) < window
        if not causal:
            mask &= (pos_k - pos_q) < window
    mask = mask[None, None]  # (1, 1, tq, tk)
    if key_lengths is not None:
        lengths = key_lengths.to(device=mask.device).view(-1, 1, 1, 1)
        key_ok = pos_k.view(1, 1, 1, tk) < lengths  # (B, 1, 1, tk)
        query_ok = pos_q.view(1, 1, tq, 1) < lengths  # (B, 1, tq, 1)
        mask = mask & key_ok & query_ok
    return mask


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_lengths: torch.Tensor | None = None,
    window: int | None = None,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention, written out: ``softmax(q k^T * scale + mask) v``.

    Args:
        q: ``(B, H, Tq, D)``; k, v: ``(B, H, Tk, D)`` with ``Tq <= Tk``; any float dtype (computed in the input
            dtype; upcast to fp32 yourself for a high-precision reference).
        causal, key_lengths ``(B,)`` int, window: see the module docstring.
        scale: softmax temperature, default ``1/sqrt(D)``.

    Returns:
        ``(o, lse)``: o ``(B, H, Tq, D)`` in q's dtype, zeros on rows with no visible key; lse ``(B, H, Tq)``
        fp32, the natural-log log-sum-exp of each row's scaled scores (``-inf`` on rows with no visible key).
        lse is what FlashAttention saves for its backward pass.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    mask = visible_keys(q.shape[-2], k.shape[-2], causal=causal, key_lengths=key_lengths, window=window, device=q.device)
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores.float(), dim=-1)  # (B, H, Tq); -inf on empty rows
    probs = softmax_reference(scores, dim=-1)
    return probs @ v, lse


def softmax_reference(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Numerically stable softmax that returns zeros (not NaN) on rows where every entry is ``-inf``.

    ``x``: any shape and float dtype; masked entries are ``-inf``. Subtracting the row max keeps ``exp`` from
    overflowing; a row whose max is ``-inf`` has nothing to normalise, so it is defined as all zeros.
    """
    row_max = x.amax(dim=dim, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(x - row_max)
    denom = e.sum(dim=dim, keepdim=True)
    return e / torch.where(denom > 0, denom, torch.ones_like(denom))


def fused_softmax_reference(x: torch.Tensor, *, scale: float = 1.0, causal: bool = False) -> torch.Tensor:
    """What `kernels.softmax.fused_softmax` computes: ``softmax(x * scale)`` over the last dim.

    With ``causal`` the last two dims are read as a ``(Tq, Tk)`` score matrix whose queries are aligned to the end
    of the keys (see the module docstring), and entries above that diagonal are masked out.
    """
    x = x * scale
    if causal:
        tq, tk = x.shape[-2], x.shape[-1]
        mask = visible_keys(tq, tk, causal=True, device=x.device)[0, 0]
        x = x.masked_fill(~mask, float("-inf"))
    return softmax_reference(x, dim=-1)
