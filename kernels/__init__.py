"""Attention kernels for long character sequences.

`reference` holds the plain PyTorch specification of every kernel; the Triton kernels (fused softmax and
FlashAttention-2 style attention) live beside it and are checked against it in `tests/`:

    from kernels.softmax import fused_softmax
    from kernels.flash_attention import flash_attention

The package imports nothing itself, so `kernels.reference` works without Triton, and the Triton modules are
decorated only when first imported (after conftest.py has chosen GPU or interpreter). The functions are not
re-exported here because `kernels.flash_attention` would then name both a module and a function.
"""
