"""Rung 1: attention as three Triton kernels that materialise the score matrix, as eager PyTorch does.

    S = scale · q kᵀ  (masked)        `_scores_kernel`:  writes B·H·T·T fp32 scores
    P = softmax(S), lse = logsumexp(S) `_softmax_kernel`: reads S, writes P (and lse)
    O = P v                           `_pv_kernel`:      reads P and v, writes O

One program handles one query row of one (batch, head), and holds the whole row of keys in one block, so T is
limited to `MAX_T`. Every kernel is simple; what is wrong is the traffic: S and P, 2·B·H·T² values, go to memory
and back (chapter 3 counts the bytes). `flash_forward` keeps them on chip. Forward only; Tq = Tk.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

MAX_T = 4096  # one program holds a whole row of T scores


@triton.jit
def _scores_kernel(q_ptr, k_ptr, s_ptr, T, D, scale, CAUSAL: tl.constexpr, BLOCK_T: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    row, bh = tl.program_id(0), tl.program_id(1)
    offs_t, offs_d = tl.arange(0, BLOCK_T), tl.arange(0, BLOCK_D)
    q = tl.load(q_ptr + (bh * T + row) * D + offs_d, mask=offs_d < D, other=0.0)  # (BLOCK_D,)
    k_mask = (offs_t[:, None] < T) & (offs_d[None, :] < D)
    k = tl.load(k_ptr + bh * T * D + offs_t[:, None] * D + offs_d[None, :], mask=k_mask, other=0.0)  # (T, D)
    s = tl.sum(q[None, :].to(tl.float32) * k.to(tl.float32), 1) * scale  # (BLOCK_T,) one dot product per key
    visible = offs_t < T
    if CAUSAL:
        visible = visible & (offs_t <= row)
    s = tl.where(visible, s, float("-inf"))
    tl.store(s_ptr + (bh * T + row) * T + offs_t, s, mask=offs_t < T)


@triton.jit
def _softmax_kernel(s_ptr, p_ptr, lse_ptr, T, BLOCK_T: tl.constexpr):
    row = tl.program_id(0)  # a row of the (B·H·T, T) score matrix
    offs_t = tl.arange(0, BLOCK_T)
    s = tl.load(s_ptr + row * T + offs_t, mask=offs_t < T, other=float("-inf"))
    m = tl.max(s, 0)  # every row sees at least its own key, so m is finite
    e = tl.exp(s - m)  # <= 1: no overflow
    total = tl.sum(e, 0)
    tl.store(p_ptr + row * T + offs_t, e / total, mask=offs_t < T)
    tl.store(lse_ptr + row, m + tl.log(total))


@triton.jit
def _pv_kernel(p_ptr, v_ptr, o_ptr, T, D, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    row, bh = tl.program_id(0), tl.program_id(1)
    offs_t, offs_d = tl.arange(0, BLOCK_T), tl.arange(0, BLOCK_D)
    p = tl.load(p_ptr + (bh * T + row) * T + offs_t, mask=offs_t < T, other=0.0)  # (BLOCK_T,)
    v_mask = (offs_t[:, None] < T) & (offs_d[None, :] < D)
    v = tl.load(v_ptr + bh * T * D + offs_t[:, None] * D + offs_d[None, :], mask=v_mask, other=0.0)  # (T, D)
    o = tl.sum(p[:, None] * v.to(tl.float32), 0)  # (BLOCK_D,) the probability-weighted sum of values
    tl.store(o_ptr + (bh * T + row) * D + offs_d, o.to(o_ptr.dtype.element_ty), mask=offs_d < D)


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q kᵀ / sqrt(D)) v`` through the materialised score matrix.

    q, k, v: ``(B, H, T, D)``, the same T (at most `MAX_T`), fp32 or fp16, CUDA tensors (or CPU tensors under
    ``TRITON_INTERPRET=1``). Returns ``(o, lse)``: o ``(B, H, T, D)`` in q's dtype, lse ``(B, H, T)`` fp32
    natural log, as `kernels.reference.attention_reference`. Raises ValueError on other shapes.
    """
    B, H, T, D = q.shape
    if k.shape != q.shape or v.shape != q.shape or T > MAX_T:
        raise ValueError(f"naive_attention needs q, k, v of one shape (B, H, T <= {MAX_T}, D); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    s = torch.empty(B, H, T, T, device=q.device, dtype=torch.float32)  # the O(T²) buffers flash avoids
    p = torch.empty_like(s)
    lse = torch.empty(B, H, T, device=q.device, dtype=torch.float32)
    o = torch.empty_like(q)
    block_t, block_d = triton.next_power_of_2(T), triton.next_power_of_2(D)
    grid = (T, B * H)
    _scores_kernel[grid](q, k, s, T, D, 1.0 / math.sqrt(D), CAUSAL=causal, BLOCK_T=block_t, BLOCK_D=block_d)
    _softmax_kernel[(B * H * T,)](s, p, lse, T, BLOCK_T=block_t)
    _pv_kernel[grid](p, v, o, T, D, BLOCK_T=block_t, BLOCK_D=block_d)
    return o, lse
