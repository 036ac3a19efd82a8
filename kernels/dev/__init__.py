"""The rungs before the production kernel, kept apart as llm.c keeps its ``dev/`` kernels.

Read them in order; each is checked against `kernels.reference` by ``tests/test_kernel_dev.py``, under the CPU
interpreter like the production kernels:

1. `naive_attention`: three Triton kernels that write the (T, T) score and probability matrices to memory, one
   query row per program. Correct, and exactly the memory traffic that FlashAttention removes.
2. `flash_forward`: a tiled, causal, forward-only FlashAttention (online softmax, the log-sum-exp saved).
3. `flash_backward`: its backward, fused into one kernel per key tile (dK, dV held in registers, dQ added
   atomically), and the autograd Function that joins the two.

`kernels.flash_attention` is the fourth rung: the same algorithm with padding, windows, bidirectional attention,
Tq < Tk, autotuning, and a backward split in two kernels so that no two programs write the same output.
Chapter 3 of the docs (``docs/03-attention.md``) walks the ladder.
"""
