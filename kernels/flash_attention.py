"""FlashAttention-2: exact attention in O(T) memory, forward and backward as Triton kernels.

``flash_attention(q, k, v, ...)`` computes ``kernels.reference.attention_reference`` (same masking convention:
queries aligned to the end of the keys, causal, per-sequence key lengths, sliding window) without ever storing
the (Tq, Tk) score matrix.

Why: the arithmetic
-------------------
Standard attention writes S = q kᵀ and P = softmax(S) to memory, 2·B·H·Tq·Tk elements. For B=1, H=8, T=65536
that is 2 × 34e9 fp16 values = 137 GB: it does not fit on any GPU. Even at T=4096, B=8, H=8 (2.1 GB per matrix)
the time goes to memory traffic: ~6 passes over a matrix of Tq·Tk elements (write S, mask, softmax r+w, read P)
against 4·Tq·Tk·D FLOPs; with D=64 that is ~21 FLOPs per byte moved, below the ~300 FLOPs/byte an H100 needs to be
compute bound. FlashAttention keeps each tile of S and P in on-chip SRAM: it reads q once, k and v once per query
tile of BLOCK_M rows, and writes only o and lse. Memory drops from O(T²) to O(T·D), and the FLOPs per byte rise
to ~BLOCK_M (4·T²·D FLOPs over 4·T²·D/BLOCK_M bytes of k, v re-reads; more when those hit in L2): compute bound.

FLOPs (counted by ``bench/attention.py``): forward 2 matmuls of 2·Tq·Tk·D = 4·B·H·Tq·Tk·D (about half when
causal); backward recomputes q kᵀ and does four more matmuls (dV, dP, dQ, dK) = 2.5x the forward.

Forward (one program per (query block of BLOCK_M rows, batch·head))
-------------------------------------------------------------------
The q tile (BLOCK_M, D) stays in SRAM while the program walks the key/value tiles (BLOCK_N, D). Softmax needs
the row max and row sum over *all* keys before it can normalise, so it is computed online: keep per row a running
max m, a running sum l = Σ exp(s − m) and an unnormalised output acc = Σ exp(s − m)·v. A new tile with scores s:

    m' = max(m, rowmax(s));   α = exp(m − m')        (≤ 1: how much the old terms shrink under the new max)
    l  ← α·l + rowsum(exp(s − m'));   acc ← α·acc + exp(s − m')·v;   m ← m'

and at the end o = acc / l. Subtracting the running max keeps every exp() <= 1 (no overflow in fp16/fp32). FA2's
changes over FA1: the division by l happens once at the end, not per tile, and each program owns a query block
so no two programs write the same output (no atomics). exp is computed as exp2 with log2(e) folded into the
scale, and the scale is applied after the row max (max(s)·c = max(s·c) for c > 0), so each score costs one FMA,
s·c − m, and one exp2 (Triton tutorial "Fused Attention").

The program also saves lse = m + log(l) per row (natural log, fp32, B·H·Tq values): the log of the softmax
denominator. That is all the backward needs to rebuild P exactly: P = exp(s − lse).

Rows with no visible key (padding, length 0) keep m = -inf, l = 0. Edge tiles compute them with m = 0 in the
exponent (so exp(-inf − 0) = 0 instead of exp(-inf + inf) = NaN), and they write o = 0, lse = -inf.

Causal query tiles are launched longest first (the last tile sees the most keys; FlashAttention-3's scheduler):
launched last, as in grid order, the heavy tiles would run alone at the end. Tiles of one head stay adjacent in
the launch order, so programs running together share their k and v tiles in L2.

Backward
--------
With dO given, S = scale·q kᵀ, P = softmax(S), O = P v:

    dV = Pᵀ dO;   dP = dO vᵀ;   dS = P ⊙ (dP − Δ);   dQ = scale·dS k;   dK = scale·dSᵀ q
    where Δ_i = Σ_j P_ij dP_ij = Σ_j P_ij (dO_i · v_j) = dO_i · O_i.

* P is recomputed from q, k and the saved lse rather than stored: storing it is exactly the O(T²) memory the
  forward avoided, and recomputing costs one extra matmul per tile. The saved lse is read in log2 units, so P is
  exp2(s·c − lse₂): the scale rides in the same FMA as in the forward, and k needs no pre-scaled copy.
* Δ is a per-row sum over *all* keys; computed inside a kernel that sees one key tile at a time it would need a
  cross-program reduction. The identity Δ_i = dO_i · O_i turns it into an O(T·D) preprocessing kernel.
* dK, dV of a key block sum over query blocks, dQ of a query block sums over key blocks. One kernel does both.
  Program i holds key tile i and walks the query tiles, accumulating dK and dV in registers. By default (FA2) each
  step also adds its share of dQ, scale·dS k, into an fp32 dQ buffer with atomic adds: 5 matmuls and 1 exp per
  score. The order of those adds varies between runs, so dQ is reproducible only to rounding;
  ``deterministic=True`` instead has program i go on to hold query tile i and walk the key tiles for its dQ (as
  the Triton tutorial does): no atomics, bitwise reproducible, at the price of computing q kᵀ, exp and dO vᵀ twice
  (7 matmuls and 2 exps per score).

Block skipping and masking
--------------------------
Each loop runs only over the tiles that the mask can leave visible: with ``causal`` a query tile stops at its
last query's diagonal (half the work), with ``window`` w it starts at its first query's position − w + 1 (and,
bidirectional, stops w − 1 past its last), so a sliding-window pass costs ~T·w, not T²; with ``key_lengths`` it
stops at the sequence length, and query tiles made only of padding do no work.

The visited tiles are split three ways (``_key_ranges``, ``_query_ranges``), as the Triton tutorial splits its
loop: the left window edge, then the tiles that every query of the program sees whole, then the diagonal, the
right window edge, the ragged last tile and the key-length edge. Only the edge loops apply the element-wise mask
of ``reference.visible_keys`` and bounds checks; the middle loop, most of the work at large T, has neither.
Padding query rows (past their sequence's length) need no mask: the forward zeroes their output at the end, and
in the backward their lse of -inf makes their P exactly 0.

Not done: Hopper's tensor descriptors (TMA loads) and warp specialisation (Triton's
``tl.range(..., warp_specialize=True)``). Both need a Triton-version check and a GPU to show they pay; the
pointer path above is what runs everywhere.

Sources: T. Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning", 2023;
T. Dao et al., "FlashAttention", 2022; J. Shah et al., "FlashAttention-3", 2024 (tile scheduling); Triton
tutorial "Fused Attention" (loop split, FMA scaling, fused backward).
"""

from __future__ import annotations

import itertools
import math

import torch
import triton
import triton.language as tl

from ._runtime import autotune_configs, check_device

MAX_HEAD_DIM = 128
LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = exp2(x · log2 e)
LN2 = tl.constexpr(0.6931471805599453)  # ln(x) = log2(x) · ln 2


# ---------------------------------------------------------------------------------------------------------------
# Autotuning
# ---------------------------------------------------------------------------------------------------------------
def _configs(blocks, warps_stages) -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for (m, n), (w, s) in zip(blocks, warps_stages)]


# Defaults, for Ampere (sm80) and Hopper (sm90), fp16/bf16, head dim <= 128: the benchmark and the model autotune
# over these (KERNELS_AUTOTUNE=1). The last of each list fits fp32 at D=128 on sm80 and is the only one with
# KERNELS_AUTOTUNE=0. `python -m kernels.compile_check` compiles them all and fails on a spill in any of them on
# sm90 (bigger tiles, 128x128 in the forward and 64x128 in the backward, spilled there at D=128; so did 4 warps
# on 32x64 in the backward). `--full` compiles every default with each mask combination the benchmark runs: at
# the 255-register limit the allocation is not monotonic in the code compiled in, and 128x64 w8 s3 and 64x64 w4
# s3 in the forward, 32x128 w8 s1-s3, 32x64 w8 s1 and 64x64 w8 in the backward spilled with some mask under
# Triton 3.6 or the CI's Triton.
FWD_DEFAULTS = _configs([(128, 64), (64, 64), (64, 32)], [(8, 2), (8, 3), (4, 2)])
# Backward: each program holds BLOCK_N keys and walks the queries BLOCK_M rows at a time (and, when
# deterministic, then holds BLOCK_N queries and walks the keys BLOCK_M at a time).
BWD_DEFAULTS = _configs([(32, 64), (32, 64)], [(8, 3), (8, 2)])
# The Triton tutorial's search space (KERNELS_AUTOTUNE=full), cut by `fwd_fits` / `bwd_fits` to what can fit on
# the GPU in use.
FWD_SPACE = _configs(*zip(*itertools.product(itertools.product((64, 128), (32, 64, 128)),
                                             itertools.product((4, 8), (2, 3, 4, 5)))))
BWD_SPACE = _configs(*zip(*itertools.product(itertools.product((32, 64), (64, 128)),
                                             itertools.product((4, 8), (1, 2, 3)))))
INTERPRETER_FWD = triton.Config({"BLOCK_M": 64, "BLOCK_N": 32})  # unequal, small tiles: the CPU tests cross
INTERPRETER_BWD = triton.Config({"BLOCK_M": 32, "BLOCK_N": 64})  # several tile boundaries on short sequences
DELTA_BLOCK_M = 64
# Autotuning reruns for every new key. Keyed on Tq and Tk themselves, decoding with a growing key cache would
# re-benchmark all configs at every step; the kernels get the lengths' next powers of two (tune_tq, tune_tk,
# otherwise unused) so that lengths in the same octave share one tuning.
_TUNE_KEY = ["tune_tq", "tune_tk", "HEAD_DIM", "CAUSAL", "HAS_WINDOW", "HAS_LENGTHS"]


def _fits(config: triton.Config, fp32_tiles: int, register_budget: int, staged_rows: int, held_rows: int,
          block_d: int, elsize: int, shared_limit: int) -> bool:
    """Can ``config`` run without spilling or overflowing shared memory? A cheap estimate, used only to cut the
    search space before compiling: ``fp32_tiles`` values live in registers, spread over the program's threads,
    at most ``register_budget`` per thread (calibrated on the sm90 report of ``kernels.compile_check``: the
    configs over it spilled); ``staged_rows`` rows of the head dim are buffered num_stages times in shared
    memory, ``held_rows`` once."""
    registers = fp32_tiles / (32 * config.num_warps)
    shared = elsize * block_d * (held_rows + config.num_stages * staged_rows)
    return registers <= register_budget and shared <= shared_limit


def fwd_fits(c: triton.Config, block_d: int, elsize: int, shared_limit: int) -> bool:
    """Forward: the (M, D) accumulator and (M, N) scores in registers, k and v tiles staged."""
    m, n = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
    return _fits(c, m * (block_d + n), 96, 2 * n, m, block_d, elsize, shared_limit)


def bwd_fits(c: triton.Config, block_d: int, elsize: int, shared_limit: int) -> bool:
    """Backward: dK, dV accumulators (N, D), (N, M) score tiles and an (M, D) dQ in registers, q and dO staged."""
    m, n = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
    return _fits(c, n * (2 * block_d + 2 * m) + m * block_d, 176, 2 * m, 2 * n, block_d, elsize, shared_limit)


def _pruner(fits):
    """An ``early_config_prune`` for the autotuner: the configs that ``fits`` the GPU of the inputs."""
    def prune(configs, named_args, **kwargs):
        q = named_args["q_ptr"]
        limit = torch.cuda.get_device_properties(q.device).shared_memory_per_block_optin
        return [c for c in configs if fits(c, kwargs["BLOCK_D"], q.element_size(), limit)] or configs[-1:]
    return prune


# ---------------------------------------------------------------------------------------------------------------
# Helpers shared by the kernels: tiles, the mask, the loop bounds.
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _load_tile(ptr, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, IN_BOUNDS: tl.constexpr):
    """Rows ``rows`` (R,) of a contiguous (T, HEAD_DIM) matrix as an (R, BLOCK_D) tile; zeros in the padding
    columns >= HEAD_DIM and in rows >= n_rows (past the end, or right padding of the sequence). IN_BOUNDS: the
    caller knows every row is < n_rows, so only the padding columns (if any) are masked."""
    ptrs = ptr + rows[:, None] * HEAD_DIM + offs_d[None, :]
    if IN_BOUNDS:
        if HEAD_DIM == BLOCK_D:
            tile = tl.load(ptrs)
        else:
            tile = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    else:
        tile = tl.load(ptrs, mask=(rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    return tile


@triton.jit
def _store_tile(ptr, tile, rows, n_rows, offs_d, HEAD_DIM: tl.constexpr):
    mask = (rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM)
    tl.store(ptr + rows[:, None] * HEAD_DIM + offs_d[None, :], tile.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _visible(pos_q, pos_k, length, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    """Can query pos_q see key pos_k (``reference.visible_keys``), for real queries (pos_q < length)? Broadcasts:
    (M, 1) and (1, N) for a tile of scores, (1, M) and (N, 1) for the transposed tile of the backward."""
    visible = (pos_k < length) & (pos_q >= 0)  # pos_q >= 0 always: it gives the mask its 2-D shape from the start
    if CAUSAL:
        visible &= pos_k <= pos_q
    if HAS_WINDOW:
        visible &= pos_q - pos_k < window
        if not CAUSAL:
            visible &= pos_k - pos_q < window
    return visible


@triton.jit
def _valid_lengths(lengths_ptr, batch, Tq, Tk, HAS_LENGTHS: tl.constexpr):
    """(keys, queries): how many leading key rows and query rows of this sequence are real, not padding.

    Loads are masked with these counts, not with Tk and Tq, so padding is read as 0 whatever it holds (a NaN
    there would otherwise leak through 0 · NaN into valid rows' gradients)."""
    if HAS_LENGTHS:
        n_k = tl.minimum(tl.maximum(tl.load(lengths_ptr + batch), 0), Tk)
        return n_k, tl.minimum(tl.maximum(n_k - (Tk - Tq), 0), Tq)
    else:
        return Tk, Tq


@triton.jit
def _clamp_ranges(lo, full_lo, full_hi, hi):
    """Order the split points lo <= full_lo <= full_hi <= hi (empty middle when nothing is wholly visible)."""
    full_lo = tl.minimum(tl.maximum(full_lo, lo), tl.maximum(hi, lo))
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), tl.maximum(hi, full_lo))
    return lo, full_lo, full_hi, hi


@triton.jit
def _key_ranges(start_m, shift, length, n_q, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Split points of the keys seen by the query tile [start_m, start_m + BLOCK_M): tiles in [lo, full_lo) and
    [full_hi, hi) need the mask (window edge; diagonal, ragged last tile, key-length edge), tiles in
    [full_lo, full_hi) are wholly visible to every query of the tile. lo, full_lo, full_hi are multiples of BLOCK_N.
    Integer division only of non-negative values: compiled Triton rounds toward zero, the interpreter down."""
    first_q = start_m + shift  # absolute positions of the tile's first and last query
    last_q = start_m + BLOCK_M - 1 + shift
    lo = 0
    full_lo = 0
    hi = tl.where(start_m < n_q, length, 0)  # a tile of padding queries sees nothing
    full_hi = length // BLOCK_N * BLOCK_N
    if CAUSAL:
        hi = tl.minimum(hi, last_q + 1)
        full_hi = tl.minimum(full_hi, (first_q + 1) // BLOCK_N * BLOCK_N)
    if HAS_WINDOW:
        lo = tl.maximum(first_q - window + 1, 0) // BLOCK_N * BLOCK_N
        full_lo = tl.cdiv(tl.maximum(last_q - window + 1, 0), BLOCK_N) * BLOCK_N
        if not CAUSAL:
            hi = tl.minimum(hi, last_q + window)
            full_hi = tl.minimum(full_hi, (first_q + window) // BLOCK_N * BLOCK_N)
    return _clamp_ranges(lo, full_lo, full_hi, hi)


@triton.jit
def _query_ranges(start_n, shift, length, n_q, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Split points of the query rows that see the key tile [start_n, start_n + BLOCK_N), as in `_key_ranges`:
    rows in [full_lo, full_hi) see every key of the tile and are real; a tile straddling the key length is masked
    throughout. Query row i sits at absolute position i + shift."""
    last_k = start_n + BLOCK_N - 1
    lo = 0
    full_lo = 0
    hi = tl.where(start_n < length, n_q, 0)  # only the n_q real queries see anything, and only real keys
    full_hi = tl.where(last_k < length, n_q // BLOCK_M * BLOCK_M, 0)
    if CAUSAL:
        lo = tl.maximum(start_n - shift, 0) // BLOCK_M * BLOCK_M
        full_lo = tl.cdiv(tl.maximum(last_k - shift, 0), BLOCK_M) * BLOCK_M
    if HAS_WINDOW:
        hi = tl.minimum(hi, tl.maximum(last_k + window - shift, 0))
        full_hi = tl.minimum(full_hi, tl.maximum(start_n + window - shift, 0) // BLOCK_M * BLOCK_M)
        if not CAUSAL:
            lo = tl.maximum(start_n - window + 1 - shift, 0) // BLOCK_M * BLOCK_M
            full_lo = tl.cdiv(tl.maximum(last_k - window + 1 - shift, 0), BLOCK_M) * BLOCK_M
    return _clamp_ranges(lo, full_lo, full_hi, hi)


@triton.jit
def _head_offsets(bh, Tq, Tk, HEAD_DIM: tl.constexpr):
    """Element offsets of one (batch, head) in the (B·H, Tq, D) query-side tensors, the (B·H, Tk, D) key-side
    tensors and the (B·H, Tq) row statistics (lse, Δ). int64: B·H·T·D can pass 2^31."""
    bh = bh.to(tl.int64)
    return bh * Tq * HEAD_DIM, bh * Tk * HEAD_DIM, bh * Tq


@triton.jit
def _load_lse2(lse_ptr, rows, n_rows):
    """Saved lse of query rows ``rows`` in log2 units. Rows with no visible key (lse = -inf) read +inf, so that
    exp2(s - lse2) = exp2(-inf) = 0 for their scores instead of NaN."""
    lse = tl.load(lse_ptr + rows, mask=rows < n_rows, other=float("-inf"))
    return tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)


# ---------------------------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _fwd_tiles(acc, l, m, q, k_ptr, v_ptr, pos_q, lo, hi, length, window, qk_scale, offs_n, offs_d,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
               MASKED: tl.constexpr, BLOCK_N: tl.constexpr):
    """Online softmax over the key tiles [lo, hi): returns the updated (acc, l, m). MASKED: apply the element
    mask (edge tiles); otherwise every key of every tile is visible to every query and in bounds, so the loop
    body has no mask and no bounds checks."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n  # (N,) key rows of this tile
        k = _load_tile(k_ptr, cols, length, offs_d, HEAD_DIM, BLOCK_D, not MASKED)  # (N, D)
        v = _load_tile(v_ptr, cols, length, offs_d, HEAD_DIM, BLOCK_D, not MASKED)  # (N, D)
        qk = tl.dot(q, tl.trans(k), input_precision="ieee")  # (M, N) raw scores; scale > 0 keeps the row max
        if MASKED:
            qk = tl.where(_visible(pos_q, cols[None, :], length, window, CAUSAL, HAS_WINDOW), qk, float("-inf"))
        m_new = tl.maximum(m, tl.max(qk, 1) * qk_scale)  # (M,) in log2 units
        if MASKED:  # a row with nothing visible yet keeps m = -inf: subtract 0 so that exp2(-inf - 0) = 0, not NaN
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:  # every row sees a key here: m_new is finite
            m_sub = m_new
        p = tl.exp2(qk * qk_scale - m_sub[:, None])  # (M, N), one FMA + exp2 per score, each <= 1
        alpha = tl.exp2(m - m_sub)  # (M,) rescales what was summed under the old max
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        m = m_new
    return acc, l, m


@triton.autotune(configs=autotune_configs(FWD_DEFAULTS, INTERPRETER_FWD, FWD_SPACE), key=_TUNE_KEY,
                 prune_configs_by={"early_config_prune": _pruner(fwd_fits)})
@triton.jit
def _attn_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, lengths_ptr, Tq, Tk, H, scale, window, tune_tq, tune_tk,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                     HAS_WINDOW: tl.constexpr, HAS_LENGTHS: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    if CAUSAL:  # longest first: the last query tiles see the most keys; launched last they would form a tail
        pid = tl.num_programs(0) - 1 - pid
    start_m = pid * BLOCK_M
    bh = tl.program_id(1)  # batch * H + head
    length, n_q = _valid_lengths(lengths_ptr, bh // H, Tq, Tk, HAS_LENGTHS)
    shift = Tk - Tq  # query row i sits at absolute position i + shift
    qk_scale = scale * LOG2E  # fold log2(e) in: exp(x * scale) = exp2(x * qk_scale)
    q_off, k_off, row_off = _head_offsets(bh, Tq, Tk, HEAD_DIM)
    q_ptr, o_ptr, k_ptr, v_ptr, lse_ptr = q_ptr + q_off, o_ptr + q_off, k_ptr + k_off, v_ptr + k_off, lse_ptr + row_off

    rows = start_m + tl.arange(0, BLOCK_M)  # (M,) query rows of this tile
    offs_n = tl.arange(0, BLOCK_N)  # (N,)
    offs_d = tl.arange(0, BLOCK_D)  # (D,) padded to a power of two >= 16 (tl.dot needs K >= 16)
    q = _load_tile(q_ptr, rows, n_q, offs_d, HEAD_DIM, BLOCK_D, False)  # (M, D), in SRAM for the whole loop
    pos_q = rows[:, None] + shift  # (M, 1)

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)  # (M,) running row max of the scores (log2 units)
    l = tl.zeros([BLOCK_M], tl.float32)  # (M,) running Σ exp2(s - m)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)  # (M, D) running Σ exp2(s - m) v
    lo, full_lo, full_hi, hi = _key_ranges(start_m, shift, length, n_q, window, CAUSAL, HAS_WINDOW, BLOCK_M,
                                           BLOCK_N)
    args = (k_ptr, v_ptr, pos_q)
    rest = (length, window, qk_scale, offs_n, offs_d, HEAD_DIM, BLOCK_D, CAUSAL, HAS_WINDOW)
    acc, l, m = _fwd_tiles(acc, l, m, q, *args, lo, full_lo, *rest, True, BLOCK_N)  # left window edge
    acc, l, m = _fwd_tiles(acc, l, m, q, *args, full_lo, full_hi, *rest, False, BLOCK_N)  # wholly visible
    acc, l, m = _fwd_tiles(acc, l, m, q, *args, full_hi, hi, *rest, True, BLOCK_N)  # diagonal, edges

    # Normalise once at the end (FA2). Padding rows (they were not masked) and rows that saw no key: output 0,
    # lse -inf.
    real = (rows < n_q) & (l > 0)
    l_safe = tl.where(real, l, 1.0)
    _store_tile(o_ptr, tl.where(real[:, None], acc / l_safe[:, None], 0.0), rows, Tq, offs_d, HEAD_DIM)
    tl.store(lse_ptr + rows, tl.where(real, (m + tl.log2(l_safe)) * LN2, float("-inf")), mask=rows < Tq)


# ---------------------------------------------------------------------------------------------------------------
# Backward: Δ preprocess, then one kernel for dK, dV and dQ
# ---------------------------------------------------------------------------------------------------------------
@triton.jit
def _attn_bwd_delta_kernel(o_ptr, do_ptr, delta_ptr, Tq, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                           BLOCK_M: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # (M,)
    q_off, _, row_off = _head_offsets(tl.program_id(1), Tq, Tq, HEAD_DIM)
    offs_d = tl.arange(0, BLOCK_D)
    o = _load_tile(o_ptr + q_off, rows, Tq, offs_d, HEAD_DIM, BLOCK_D, False).to(tl.float32)  # (M, D)
    do = _load_tile(do_ptr + q_off, rows, Tq, offs_d, HEAD_DIM, BLOCK_D, False).to(tl.float32)  # (M, D)
    tl.store(delta_ptr + row_off + rows, tl.sum(o * do, 1), mask=rows < Tq)  # Δ_i = dO_i · O_i


@triton.jit
def _bwd_kv_tiles(dk, dv, k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, cols, lo, hi, n_q, length, window,
                  scale, qk_scale, offs_m, offs_d, shift, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                  CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, ATOMIC_DQ: tl.constexpr, MASKED: tl.constexpr,
                  BLOCK_M: tl.constexpr):
    """For the held key tile (k, v), walk the query rows [lo, hi): returns the updated (dK, dV) accumulators and,
    with ATOMIC_DQ, adds each step's dQ = scale·dS k into the fp32 dq buffer (FA2). Works in the transposed
    orientation, (N keys, M queries), so that dV += Pᵀ dO and dK += dSᵀ q are plain matmuls."""
    for start_m in range(lo, hi, BLOCK_M):
        rows = start_m + offs_m  # (M,) query rows of this step
        q = _load_tile(q_ptr, rows, n_q, offs_d, HEAD_DIM, BLOCK_D, not MASKED)  # (M, D)
        do = _load_tile(do_ptr, rows, n_q, offs_d, HEAD_DIM, BLOCK_D, not MASKED)  # (M, D)
        lse2 = _load_lse2(lse_ptr, rows, n_q)  # (M,)
        delta = tl.load(delta_ptr + rows, mask=rows < n_q, other=0.0)  # (M,)
        s_t = tl.dot(k, tl.trans(q), input_precision="ieee")  # (N, M) = Sᵀ / scale
        if MASKED:
            s_t = tl.where(_visible(rows[None, :] + shift, cols[:, None], length, window, CAUSAL, HAS_WINDOW), s_t,
                           float("-inf"))
        p_t = tl.exp2(s_t * qk_scale - lse2[None, :])  # (N, M) = Pᵀ from the saved lse; the scale rides in the FMA
        dv += tl.dot(p_t.to(do.dtype), do, input_precision="ieee")  # (N, D)
        dp_t = tl.dot(v, tl.trans(do), input_precision="ieee")  # (N, M) = dPᵀ = v dOᵀ
        ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)  # (N, M) = dSᵀ
        dk += tl.dot(ds_t, q, input_precision="ieee")  # (N, D)
        if ATOMIC_DQ:
            dq = tl.dot(tl.trans(ds_t), k, input_precision="ieee") * scale  # (M, D)
            mask = (rows[:, None] < n_q) & (offs_d[None, :] < HEAD_DIM)
            tl.atomic_add(dq_ptr + rows[:, None] * HEAD_DIM + offs_d[None, :], dq, mask=mask, sem="relaxed")
    return dk, dv


@triton.jit
def _bwd_q_tiles(dq, q, do, lse2, delta, k_ptr, v_ptr, pos_q, lo, hi, length, window, qk_scale, offs_n, offs_d,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                 MASKED: tl.constexpr, BLOCK_N: tl.constexpr):
    """For the held query tile, walk the key tiles [lo, hi): returns the updated dQ / scale accumulator."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n  # (N,)
        k = _load_tile(k_ptr, cols, length, offs_d, HEAD_DIM, BLOCK_D, not MASKED)  # (N, D)
        v = _load_tile(v_ptr, cols, length, offs_d, HEAD_DIM, BLOCK_D, not MASKED)  # (N, D)
        s = tl.dot(q, tl.trans(k), input_precision="ieee")  # (M, N)
        if MASKED:
            s = tl.where(_visible(pos_q, cols[None, :], length, window, CAUSAL, HAS_WINDOW), s, float("-inf"))
        p = tl.exp2(s * qk_scale - lse2[:, None])  # (M, N) = P
        dp = tl.dot(do, tl.trans(v), input_precision="ieee")  # (M, N) = dO vᵀ
        ds = p * (dp - delta[:, None])  # (M, N) = dS
        dq += tl.dot(ds.to(k.dtype), k, input_precision="ieee")  # (M, D)
    return dq


@triton.autotune(configs=autotune_configs(BWD_DEFAULTS, INTERPRETER_BWD, BWD_SPACE), key=_TUNE_KEY + ["ATOMIC_DQ"],
                 prune_configs_by={"early_config_prune": _pruner(bwd_fits)},
                 reset_to_zero=["dq_ptr"])
@triton.jit
def _attn_bwd_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, dk_ptr, dv_ptr, lengths_ptr,
                     Tq, Tk, H, scale, window, tune_tq, tune_tk,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                     HAS_WINDOW: tl.constexpr, HAS_LENGTHS: tl.constexpr, ATOMIC_DQ: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program i: dK, dV of key tile i (BLOCK_N keys, walking the queries BLOCK_M at a time); then, unless
    ATOMIC_DQ added dQ along the way, dQ of query tile i (BLOCK_N queries, walking the keys BLOCK_M at a time)."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    length, n_q = _valid_lengths(lengths_ptr, bh // H, Tq, Tk, HAS_LENGTHS)
    shift = Tk - Tq
    qk_scale = scale * LOG2E
    q_off, k_off, row_off = _head_offsets(bh, Tq, Tk, HEAD_DIM)
    q_ptr, do_ptr, dq_ptr = q_ptr + q_off, do_ptr + q_off, dq_ptr + q_off
    lse_ptr, delta_ptr = lse_ptr + row_off, delta_ptr + row_off
    k_ptr, v_ptr, dk_ptr, dv_ptr = k_ptr + k_off, v_ptr + k_off, dk_ptr + k_off, dv_ptr + k_off
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)

    start_n = pid * BLOCK_N
    cols = start_n + offs_n  # (N,) key rows owned by this program
    k = _load_tile(k_ptr, cols, length, offs_d, HEAD_DIM, BLOCK_D, False)  # (N, D), in SRAM for the whole loop
    v = _load_tile(v_ptr, cols, length, offs_d, HEAD_DIM, BLOCK_D, False)  # (N, D)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    lo, full_lo, full_hi, hi = _query_ranges(start_n, shift, length, n_q, window, CAUSAL, HAS_WINDOW, BLOCK_M,
                                             BLOCK_N)
    args = (k, v, q_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, cols)
    rest = (n_q, length, window, scale, qk_scale, offs_m, offs_d, shift, HEAD_DIM, BLOCK_D, CAUSAL, HAS_WINDOW,
            ATOMIC_DQ)
    dk, dv = _bwd_kv_tiles(dk, dv, *args, lo, full_lo, *rest, True, BLOCK_M)  # diagonal / left window edge
    dk, dv = _bwd_kv_tiles(dk, dv, *args, full_lo, full_hi, *rest, False, BLOCK_M)  # wholly visible
    dk, dv = _bwd_kv_tiles(dk, dv, *args, full_hi, hi, *rest, True, BLOCK_M)  # right edges, ragged tail
    _store_tile(dk_ptr, dk * scale, cols, Tk, offs_d, HEAD_DIM)  # keys nobody sees get exact zeros
    _store_tile(dv_ptr, dv, cols, Tk, offs_d, HEAD_DIM)

    if not ATOMIC_DQ:  # the query tile of the same index, roles of the block sizes swapped (Triton tutorial)
        start_q = pid * BLOCK_N
        rows = start_q + offs_n  # (N,) query rows owned by this program
        q = _load_tile(q_ptr, rows, n_q, offs_d, HEAD_DIM, BLOCK_D, False)  # (N, D)
        do = _load_tile(do_ptr, rows, n_q, offs_d, HEAD_DIM, BLOCK_D, False)  # (N, D)
        lse2 = _load_lse2(lse_ptr, rows, n_q)  # (N,)
        delta = tl.load(delta_ptr + rows, mask=rows < n_q, other=0.0)  # (N,)
        dq = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        lo, full_lo, full_hi, hi = _key_ranges(start_q, shift, length, n_q, window, CAUSAL, HAS_WINDOW, BLOCK_N,
                                               BLOCK_M)
        args = (q, do, lse2, delta, k_ptr, v_ptr, rows[:, None] + shift)
        rest = (length, window, qk_scale, offs_m, offs_d, HEAD_DIM, BLOCK_D, CAUSAL, HAS_WINDOW)
        dq = _bwd_q_tiles(dq, *args, lo, full_lo, *rest, True, BLOCK_M)
        dq = _bwd_q_tiles(dq, *args, full_lo, full_hi, *rest, False, BLOCK_M)
        dq = _bwd_q_tiles(dq, *args, full_hi, hi, *rest, True, BLOCK_M)
        _store_tile(dq_ptr, dq * scale, rows, Tq, offs_d, HEAD_DIM)


# ---------------------------------------------------------------------------------------------------------------
# Autograd wrapper and public function
# ---------------------------------------------------------------------------------------------------------------
def _grid_over(n_rows: int, block: str, bh: int):
    return lambda meta: (triton.cdiv(n_rows, meta[block]), bh)


def _scalar_args(Tq: int, Tk: int, H: int, scale: float, window: int | None) -> tuple:
    """The kernels' scalar arguments: Tq, Tk, H, scale, window (0 = none), tune_tq, tune_tk."""
    return Tq, Tk, H, scale, window or 0, triton.next_power_of_2(Tq), triton.next_power_of_2(Tk)


def autotune_choices() -> dict[str, dict[str, str]]:
    """The config each autotuned kernel chose so far, per tuning key: {kernel: {key: config}} (for the logs).
    A kernel with a single config (interpreter, KERNELS_AUTOTUNE=0) never tunes: its key reads "single config"."""
    return {kernel.fn.__name__: {"single config": str(kernel.configs[0])} if len(kernel.configs) == 1 else
            {str(key): str(config) for key, config in kernel.cache.items()}
            for kernel in (_attn_fwd_kernel, _attn_bwd_kernel)}


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, key_lengths, window, scale, deterministic):
        B, H, Tq, D = q.shape
        Tk = k.shape[2]
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o = torch.empty_like(q)  # (B, H, Tq, D)
        lse = torch.empty(B, H, Tq, device=q.device, dtype=torch.float32)  # natural log, -inf on empty rows
        lengths = None if key_lengths is None else key_lengths.to(device=q.device, dtype=torch.int32).contiguous()
        scalars = _scalar_args(Tq, Tk, H, scale, window)
        meta = dict(HEAD_DIM=D, BLOCK_D=max(16, triton.next_power_of_2(D)), CAUSAL=causal,
                    HAS_WINDOW=window is not None, HAS_LENGTHS=lengths is not None)
        if o.numel():
            _attn_fwd_kernel[_grid_over(Tq, "BLOCK_M", B * H)](
                q, k, v, o, lse, lengths, *scalars, **meta)
        ctx.save_for_backward(q, k, v, o, lse, lengths)
        ctx.meta, ctx.scalars, ctx.deterministic = meta, scalars, deterministic
        ctx.mark_non_differentiable(lse)
        return o, lse

    @staticmethod
    def backward(ctx, do, _dlse):
        q, k, v, o, lse, lengths = ctx.saved_tensors
        B, H, Tq, D = q.shape
        Tk = k.shape[2]
        do = do.contiguous()
        dk, dv = torch.empty_like(k), torch.empty_like(v)
        dq = torch.zeros(q.shape, device=q.device, dtype=torch.float32)  # atomics add into it
        delta = torch.empty_like(lse)  # (B, H, Tq) fp32, Δ_i = dO_i · O_i
        if q.numel():
            _attn_bwd_delta_kernel[(triton.cdiv(Tq, DELTA_BLOCK_M), B * H)](
                o, do, delta, Tq, HEAD_DIM=D, BLOCK_D=ctx.meta["BLOCK_D"], BLOCK_M=DELTA_BLOCK_M)
            # deterministic: program i also owns query tile i; Tq <= Tk, so the key tiles cover the query tiles
            _attn_bwd_kernel[_grid_over(Tk, "BLOCK_N", B * H)](
                q, k, v, do, lse, delta, dq, dk, dv, lengths, *ctx.scalars, **ctx.meta,
                ATOMIC_DQ=not ctx.deterministic)
        else:  # no queries: no gradient reaches k or v
            dk.zero_()
            dv.zero_()
        return dq.to(q.dtype), dk, dv, None, None, None, None, None


def _validate(q, k, v, key_lengths, window) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor (B, H, T, D), got {getattr(t, 'shape', type(t))}")
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"{name} must be fp16, bf16 or fp32, got {t.dtype}")
        check_device(name, t)
    if not (q.dtype == k.dtype == v.dtype and q.device == k.device == v.device):
        raise ValueError(f"q, k, v must share dtype and device, got {q.dtype}/{k.dtype}/{v.dtype} on "
                         f"{q.device}/{k.device}/{v.device}")
    (B, H, Tq, D), Tk = q.shape, k.shape[2]
    if k.shape != v.shape or k.shape[:2] != (B, H) or k.shape[3] != D:
        raise ValueError(f"expected k, v of shape (B={B}, H={H}, Tk, D={D}), got {tuple(k.shape)}, {tuple(v.shape)}")
    if Tq > Tk:
        raise ValueError(f"query length {Tq} exceeds key length {Tk}; queries are aligned to the end of the keys")
    if B * H > 65535:
        raise ValueError(f"B·H = {B * H} exceeds 65535, the CUDA limit of the grid axis the kernels use for it")
    if not 1 <= D <= MAX_HEAD_DIM:
        raise ValueError(f"head dim {D} not supported: use 1..{MAX_HEAD_DIM} (tiles are padded to a power of two)")
    if window is not None and (not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be an int >= 1 or None, got {window!r}")
    if key_lengths is not None:
        if not isinstance(key_lengths, torch.Tensor) or key_lengths.shape != (B,) or key_lengths.is_floating_point():
            raise ValueError(f"key_lengths must be an int tensor of shape ({B},), got {key_lengths!r}")
        if key_lengths.device != q.device:
            raise ValueError(f"key_lengths is on {key_lengths.device}, q on {q.device}")


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    key_lengths: torch.Tensor | None = None,
    window: int | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    deterministic: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Exact attention ``softmax(q kᵀ · scale + mask) v`` with the FlashAttention-2 algorithm; differentiable in
    q, k, v. Same result as ``kernels.reference.attention_reference`` (see its module docstring for the mask).

    Args:
        q: ``(B, H, Tq, D)``; k, v: ``(B, H, Tk, D)`` with ``Tq <= Tk``, ``1 <= D <= 128``; all fp16, bf16 or fp32
            on one CUDA device (or CPU under ``TRITON_INTERPRET=1``). Non-contiguous inputs are copied.
        causal: query i (absolute position ``i + Tk - Tq``) sees keys at or before its position.
        key_lengths: ``(B,)`` int, real keys per sequence (right padding); values are clamped to ``[0, Tk]``.
            Query rows at or past the length output zeros, have lse = -inf and get zero gradients.
        window: sliding window: keys at most ``window - 1`` positions to the left (and, when not causal, to the
            right); tiles outside it are skipped, so cost grows as T·window.
        scale: score multiplier > 0, default ``1/sqrt(D)``.
        return_lse: also return the per-row log-sum-exp (no gradient flows through it).
        deterministic: compute dQ without atomics (bitwise reproducible gradients, one more pass over q kᵀ and
            dO vᵀ); by default dQ is summed in fp32 with atomic adds, whose order varies from run to run.

    Returns:
        o ``(B, H, Tq, D)`` in q's dtype, or ``(o, lse)`` with lse ``(B, H, Tq)`` fp32 (natural log, -inf on rows
        with no visible key).

    Raises:
        ValueError: on shapes, dtypes, devices, window, key_lengths or scale outside the above.
    """
    _validate(q, k, v, key_lengths, window)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if not scale > 0:  # the kernels take the row max before scaling, which a negative scale would turn into a min
        raise ValueError(f"scale must be > 0, got {scale}")
    o, lse = _FlashAttention.apply(q, k, v, bool(causal), key_lengths, window, scale, bool(deterministic))
    return (o, lse) if return_lse else o
