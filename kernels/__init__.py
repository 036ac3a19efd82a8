"""Attention kernels for long character sequences.

`reference` holds the plain PyTorch specification of every kernel; the Triton kernels (fused softmax and
FlashAttention-2 style attention) live beside it and are checked against it in `tests/`.
"""
