"""Rung 2: causal FlashAttention, forward only, in one tiled kernel (Dao et al. 2022; FA2's loop order, 2023).

One program owns BLOCK_M query rows of one (batch, head). Its q tile stays on chip while it walks the key/value
tiles left of the diagonal, keeping per row a running max m, a running sum l = Σ exp(s − m) and an unnormalised
output acc = Σ exp(s − m)·v. When a tile raises the max to m', what was summed so far is rescaled by
α = exp(m − m') ≤ 1. After the last tile o = acc / l, and lse = m + log l is saved for the backward
(`flash_backward`). Nothing of size T² is ever written: memory traffic is q, k, v read, o and lse written, plus
one re-read of k and v per query tile.

Left out here and present in `kernels.flash_attention`: padding (key lengths), windows, bidirectional attention,
Tq < Tk, exp2 with log2(e) folded into the scale, autotuning.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _flash_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, T, D, scale,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    start_m, bh = tl.program_id(0) * BLOCK_M, tl.program_id(1)
    rows = start_m + tl.arange(0, BLOCK_M)  # (M,) query rows of this tile
    offs_n, offs_d = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_D)
    base = bh * T * D
    q_mask = (rows[:, None] < T) & (offs_d[None, :] < D)
    q = tl.load(q_ptr + base + rows[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)  # (M, D)

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running row max
    l = tl.zeros([BLOCK_M], tl.float32)  # running Σ exp(s - m)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)  # running Σ exp(s - m) v
    for start_n in range(0, tl.minimum(start_m + BLOCK_M, T), BLOCK_N):  # causal: stop at the diagonal
        cols = start_n + offs_n  # (N,) key rows of this tile
        kv_mask = (cols[:, None] < T) & (offs_d[None, :] < D)
        k = tl.load(k_ptr + base + cols[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)  # (N, D)
        v = tl.load(v_ptr + base + cols[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)  # (N, D)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # (M, N)
        s = tl.where((cols[None, :] <= rows[:, None]) & (cols[None, :] < T), s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))  # finite: key 0 is in the first tile and visible to every row
        p = tl.exp(s - m_new[:, None])  # (M, N), each <= 1
        alpha = tl.exp(m - m_new)  # (M,) shrinks the old terms to the new max
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m = m_new

    o = acc / l[:, None]  # normalise once, at the end
    tl.store(o_ptr + base + rows[:, None] * D + offs_d[None, :], o.to(o_ptr.dtype.element_ty), mask=q_mask)
    tl.store(lse_ptr + bh * T + rows, m + tl.log(l), mask=rows < T)


def flash_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_m: int = 64, block_n: int = 64
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention ``softmax(q kᵀ / sqrt(D) + causal mask) v`` without storing the (T, T) matrix.

    q, k, v: ``(B, H, T, D)`` of one shape, fp32 or fp16, D <= 128; block sizes are powers of two >= 16. Returns
    ``(o, lse)``: o ``(B, H, T, D)`` in q's dtype, lse ``(B, H, T)`` fp32 (natural log), as
    `kernels.reference.attention_reference(..., causal=True)`. Raises ValueError on other shapes.
    """
    B, H, T, D = q.shape
    if k.shape != q.shape or v.shape != q.shape or D > 128:
        raise ValueError(f"flash_forward needs q, k, v of one shape (B, H, T, D <= 128); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o = torch.empty_like(q)
    lse = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(T, block_m), B * H)
    _flash_fwd_kernel[grid](q, k, v, o, lse, T, D, 1.0 / math.sqrt(D), BLOCK_M=block_m, BLOCK_N=block_n,
                            BLOCK_D=max(16, triton.next_power_of_2(D)))
    return o, lse
