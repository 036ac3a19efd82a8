"""Rung 3: the backward of `flash_forward`, fused into one kernel, and the autograd Function joining the two.

With S = scale·q kᵀ (causal mask), P = softmax(S), O = P v and the upstream gradient dO:

    dV = Pᵀ dO;   dP = dO vᵀ;   dS = P ⊙ (dP − Δ);   dQ = scale·dS k;   dK = scale·dSᵀ q
    where Δ_i = dO_i · O_i

P is not stored: each tile rebuilds it from q, k and the saved lse as P = exp(S − lse). Δ, a sum over all keys
of row i, equals dO_i · O_i, so it is computed before the kernel in O(T·D) (one line of PyTorch below).

One program owns BLOCK_N keys of one (batch, head): its dK and dV stay in registers while it walks the query
tiles at or below the diagonal; each query tile's share of dQ is added to a fp32 buffer with an atomic add,
because many key tiles contribute to the same dQ rows. Atomics make the summation order, and so the last bits
of dQ, vary between runs on a GPU. `kernels.flash_attention` (FlashAttention-2, Dao 2023) avoids them with a
second kernel that owns the query tiles and computes dQ, at the price of computing q kᵀ twice.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .flash_forward import flash_forward


@triton.jit
def _flash_bwd_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, dk_ptr, dv_ptr, T, D, scale,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    start_n, bh = tl.program_id(0) * BLOCK_N, tl.program_id(1)
    cols = start_n + tl.arange(0, BLOCK_N)  # (N,) key rows owned by this program
    offs_m, offs_d = tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_D)
    base = bh * T * D
    kv_mask = (cols[:, None] < T) & (offs_d[None, :] < D)
    k = tl.load(k_ptr + base + cols[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)  # (N, D)
    v = tl.load(v_ptr + base + cols[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)  # (N, D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    first_m = (start_n // BLOCK_M) * BLOCK_M  # causal: query rows above the first key never see these keys
    for start_m in range(first_m, T, BLOCK_M):
        rows = start_m + offs_m  # (M,)
        q_mask = (rows[:, None] < T) & (offs_d[None, :] < D)
        q = tl.load(q_ptr + base + rows[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)  # (M, D)
        do = tl.load(do_ptr + base + rows[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)  # (M, D)
        lse = tl.load(lse_ptr + bh * T + rows, mask=rows < T, other=float("inf"))  # (M,)
        delta = tl.load(delta_ptr + bh * T + rows, mask=rows < T, other=0.0)  # (M,)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # (M, N)
        visible = (cols[None, :] <= rows[:, None]) & (cols[None, :] < T) & (rows[:, None] < T)
        p = tl.where(visible, tl.exp(s - lse[:, None]), 0.0)  # (M, N) the forward's probabilities, rebuilt
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision="ieee")  # (N, D)
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")  # (M, N)
        ds = p * (dp - delta[:, None]) * scale  # (M, N), the softmax backward with the scale folded in
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision="ieee")  # (N, D)
        dq = tl.dot(ds.to(k.dtype), k, input_precision="ieee")  # (M, D): this key tile's share of dQ
        tl.atomic_add(dq_ptr + base + rows[:, None] * D + offs_d[None, :], dq, mask=q_mask)

    tl.store(dk_ptr + base + cols[:, None] * D + offs_d[None, :], dk.to(dk_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(dv_ptr + base + cols[:, None] * D + offs_d[None, :], dv.to(dv_ptr.dtype.element_ty), mask=kv_mask)


class _CausalFlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, block_m, block_n):
        o, lse = flash_forward(q, k, v, block_m=block_m, block_n=block_n)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.blocks = (block_m, block_n)
        return o, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, o, lse = ctx.saved_tensors
        block_m, block_n = ctx.blocks
        B, H, T, D = q.shape
        do = do.contiguous()
        delta = (do.float() * o.float()).sum(-1)  # (B, H, T): Δ_i = dO_i · O_i
        dq = torch.zeros(B, H, T, D, device=q.device, dtype=torch.float32)  # atomics accumulate in fp32
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        grid = (triton.cdiv(T, block_n), B * H)
        _flash_bwd_kernel[grid](q, k, v, do, lse, delta, dq, dk, dv, T, D, 1.0 / math.sqrt(D), BLOCK_M=block_m,
                                BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(D)))
        return dq.to(q.dtype), dk, dv, None, None


def causal_flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, block_m: int = 64,
                           block_n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """`flash_forward` with a backward pass: differentiable causal attention in O(T) memory.

    Same arguments, returns and errors as `flash_forward` (``(o, lse)``, o ``(B, H, T, D)``, lse ``(B, H, T)``
    fp32); gradients flow to q, k and v through `_flash_bwd_kernel`.
    """
    return _CausalFlashAttention.apply(q, k, v, block_m, block_n)
