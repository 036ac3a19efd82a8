"""FlashAttention at the sizes and configs the benchmark uses, against the fp32 reference: the first step of
``bench/gpu_check.sh`` (run there with ``pytest -n`` so that the workers' compilations overlap).

On a GPU: T in {1000, 4133} and Tq = 1000 / Tk = 1200, D in {64, 128}, causal or not, bf16 and fp16, plain and
with key lengths + a window; the autotuner picks among the same default configs as in the benchmark
(KERNELS_AUTOTUNE=1), so the configs it chooses are the ones tested. On the CPU the interpreter runs the same cases
at short lengths (still crossing tile boundaries) and in fp16 only: bf16 the interpreter computes wrongly, and fp32
is covered by ``test_kernel_flash.py``.

The comparison helpers live here, not in ``test_kernel_flash.py``, because a bare GPU machine may lack the
hypothesis package that module needs.
"""

import pytest
import torch

from kernels.flash_attention import flash_attention
from kernels.reference import attention_reference
from kernels.tolerances import TOLERANCES

def _inputs(b, h, tq, tk, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, d, generator=g).to(device=device, dtype=dtype) for t in (tq, tk, tk))
    do = torch.randn(b, h, tq, d, generator=g).to(device=device, dtype=dtype)
    return q, k, v, do


def _run(fn, q, k, v, do, **kw):
    """o, lse and (dq, dk, dv) of `fn` (either implementation) for upstream gradient do."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    o, lse = fn(q, k, v, **kw)
    o.backward(do)
    return o, lse, (q.grad, k.grad, v.grad)


def _flash(q, k, v, **kw):
    return flash_attention(q, k, v, return_lse=True, **kw)


def check_against_reference(b, h, tq, tk, d, dtype, device, seed=0, deterministic=False, **kw):
    """Compare o, lse, dq, dk, dv with the reference on fp32 copies; return the kernel's results."""
    q, k, v, do = _inputs(b, h, tq, tk, d, dtype, device, seed)
    o, lse, grads = _run(_flash, q, k, v, do, deterministic=deterministic, **kw)
    o_ref, lse_ref, grads_ref = _run(attention_reference, q.float(), k.float(), v.float(), do.float(), **kw)
    tol = TOLERANCES[dtype]
    assert o.dtype == dtype and lse.dtype == torch.float32 and o.shape == q.shape and lse.shape == (b, h, tq)
    torch.testing.assert_close(o.float(), o_ref, **tol)
    torch.testing.assert_close(lse, lse_ref, **tol)  # -inf must match -inf exactly
    for name, g, g_ref in zip("qkv", grads, grads_ref):
        assert torch.isfinite(g).all(), f"d{name} has NaN/inf"
        torch.testing.assert_close(g.float(), g_ref, **tol, msg=lambda m: f"d{name}: {m}")
    return o, lse, grads


GPU = torch.cuda.is_available()
LENGTHS = [(1000, 1000), (4133, 4133), (1000, 1200)] if GPU else [(40, 40), (67, 67), (40, 60)]
DTYPES = [torch.bfloat16, torch.float16] if GPU else [torch.float16]


@pytest.mark.parametrize("masks", ["plain", "lengths+window"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("tq, tk", LENGTHS)
def test_benchmark_sizes_match_reference(tq, tk, d, causal, dtype, masks, device):
    kw = {}
    if masks == "lengths+window":  # one full sequence, one cut at 3/5 of the keys; a window of a quarter of Tk
        kw = dict(key_lengths=torch.tensor([tk, tk * 3 // 5], device=device), window=tk // 4)
    check_against_reference(2, 2 if GPU else 1, tq, tk, d, dtype, device, causal=causal, **kw)
