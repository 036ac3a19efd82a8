"""The rungs of `kernels/dev/` against the fp32 reference (`kernels.reference`), under the CPU interpreter.

The same comparison as ``test_kernel_flash.py``: outputs, lse and (for rung 3) dq, dk, dv within
`kernels.tolerances.TOLERANCES`. Tiles of 16 and 32 rows make the short lengths below (1, 7, 33, 65) cross zero,
one and several tile boundaries, including query and key tiles of different sizes.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels.dev.flash_backward import causal_flash_attention
from kernels.dev.flash_forward import flash_forward
from kernels.dev.naive_attention import naive_attention
from kernels.reference import attention_reference
from kernels.tolerances import TOLERANCES


def _inputs(b, h, t, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, t, d, generator=g).to(device=device, dtype=dtype) for _ in range(4)]  # q, k, v, do


def _assert_close(actual, expected, dtype, what):
    torch.testing.assert_close(actual.float(), expected, **TOLERANCES[dtype], msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 1, 16), (2, 1, 7, 8), (1, 2, 33, 32)])
def test_naive_attention(shape, causal, device):
    q, k, v, _ = _inputs(*shape, torch.float32, device)
    o, lse = naive_attention(q, k, v, causal=causal)
    o_ref, lse_ref = attention_reference(q, k, v, causal=causal)
    _assert_close(o, o_ref, torch.float32, "o")
    _assert_close(lse, lse_ref, torch.float32, "lse")


SHAPES = [  # (B, H, T, D, block_m, block_n)
    (1, 1, 1, 16, 16, 16),
    (2, 1, 7, 8, 16, 16),
    (1, 2, 33, 32, 16, 32),
    (1, 1, 65, 64, 32, 16),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("b, h, t, d, block_m, block_n", SHAPES)
def test_flash_forward_and_backward(b, h, t, d, block_m, block_n, dtype, device):
    q, k, v, do = _inputs(b, h, t, d, dtype, device)
    o, lse = flash_forward(q, k, v, block_m=block_m, block_n=block_n)
    o_ref, lse_ref = attention_reference(q.float(), k.float(), v.float(), causal=True)
    _assert_close(o, o_ref, dtype, "flash_forward o")
    _assert_close(lse, lse_ref, dtype, "flash_forward lse")

    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    o2, _ = causal_flash_attention(*leaves, block_m=block_m, block_n=block_n)
    o2.backward(do)
    refs = [t.detach().float().requires_grad_() for t in (q, k, v)]
    attention_reference(*refs, causal=True)[0].backward(do.float())
    _assert_close(o2, o_ref, dtype, "o")
    for name, leaf, ref in zip("qkv", leaves, refs):
        assert leaf.grad.dtype == dtype
        _assert_close(leaf.grad, ref.grad, dtype, f"d{name}")


def test_shape_errors():
    q = torch.zeros(1, 1, 4, 16)
    with pytest.raises(ValueError, match="one shape"):
        flash_forward(q, torch.zeros(1, 1, 5, 16), q)
    with pytest.raises(ValueError, match="one shape"):
        naive_attention(q, q, torch.zeros(1, 1, 4, 8))


COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from kernels.dev import flash_backward, flash_forward

def compile_sm90(fn, pointers):
    blocks = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=64)
    sig = {n: "constexpr" if n in blocks else pointers.get(n, "fp32" if n == "scale" else "i32") for n in fn.arg_names}
    triton.compile(triton.compiler.ASTSource(fn, signature=sig, constexprs=blocks), target=GPUTarget("cuda", 90, 32))

fp16 = dict(q_ptr="*fp16", k_ptr="*fp16", v_ptr="*fp16", do_ptr="*fp16", o_ptr="*fp16", dk_ptr="*fp16",
            dv_ptr="*fp16", lse_ptr="*fp32", delta_ptr="*fp32", dq_ptr="*fp32")
compile_sm90(flash_forward._flash_fwd_kernel, fp16)
compile_sm90(flash_backward._flash_bwd_kernel, fp16)
print("compiled")
"""


def test_flash_rungs_compile_for_hopper():
    """The interpreter accepts code a GPU compiler rejects; Triton's real compiler runs here without a GPU
    (as `kernels.compile_check` does for the production kernels), with the interpreter switched off."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], cwd=Path(__file__).resolve().parents[1], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "compiled" in run.stdout, run.stderr[-2000:]
