"""Fused softmax kernel (`kernels.softmax`) against `kernels.reference.fused_softmax_reference` in fp32."""

import pytest
import torch

from kernels import softmax
from kernels.reference import fused_softmax_reference
from kernels.tolerances import TOLERANCES

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 is only correct on a GPU (interpreter bug)")


def check_against_reference(x, dy, **kw):
    """Compare y and dx with the reference on fp32 copies; return the kernel's (y, dx)."""
    x_k, x_ref = x.detach().clone().requires_grad_(), x.detach().float().requires_grad_()
    y = softmax.fused_softmax(x_k, **kw)
    y.backward(dy)
    y_ref = fused_softmax_reference(x_ref, **kw)
    y_ref.backward(dy.float())
    tol = TOLERANCES[x.dtype]
    assert y.dtype == x.dtype and y.shape == x.shape
    torch.testing.assert_close(y.float(), y_ref, **tol)
    assert torch.isfinite(x_k.grad).all()
    torch.testing.assert_close(x_k.grad.float(), x_ref.grad, **tol)
    return y, x_k.grad


def _randn(*shape, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(*shape, generator=g)).to(device=device, dtype=dtype)


SHAPES = [(1,), (3, 7), (2, 3, 37), (2, 5, 64), (4, 130)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("scale", [1.0, 0.125])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(shape, scale, dtype, device):
    check_against_reference(_randn(*shape, dtype=dtype, device=device), _randn(*shape, dtype=dtype, device=device,
                                                                               seed=1), scale=scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(2, 7, 37), (3, 1, 5), (2, 2, 9, 9), (1, 40, 40)], ids=str)
def test_causal_matches_reference(shape, dtype, device):
    """Tq <= Tk, queries aligned to the end of the keys; Tq = 1 sees everything."""
    check_against_reference(_randn(*shape, dtype=dtype, device=device), _randn(*shape, dtype=dtype, device=device,
                                                                               seed=1), scale=0.5, causal=True)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [16, 17, 100])
def test_rows_longer_than_a_block(n, causal, monkeypatch, device):
    """The two-pass (online max/sum) path, forced with 16-wide blocks: rows of exactly one, just over one and
    several blocks; the large scale makes later blocks raise the running max often."""
    monkeypatch.setattr(softmax, "MAX_BLOCK_N", 16)
    check_against_reference(_randn(2, 9, n, device=device), _randn(2, 9, n, device=device, seed=1), scale=4.0,
                            causal=causal)


def test_real_long_row(device):
    """A row longer than the real MAX_BLOCK_N."""
    n = softmax.MAX_BLOCK_N + 900
    check_against_reference(_randn(2, n, device=device), _randn(2, n, device=device, seed=1), scale=0.3)


@pytest.mark.parametrize("max_block", [16, softmax.MAX_BLOCK_N])
def test_fully_masked_rows_are_zero_with_zero_gradient(max_block, monkeypatch, device):
    monkeypatch.setattr(softmax, "MAX_BLOCK_N", max_block)
    x = _randn(4, 40, device=device)
    x[0] = float("-inf")  # fully masked
    x[1, :35] = float("-inf")  # only the last block visible
    x[2, 3:] = float("-inf")  # only the first block visible
    y, dx = check_against_reference(x, _randn(4, 40, device=device, seed=1))
    assert (y[0] == 0).all() and (dx[0] == 0).all()
    assert (dx[1, :35] == 0).all() and (dx[2, 3:] == 0).all()


def test_empty_and_invalid_inputs(device):
    assert softmax.fused_softmax(torch.zeros(3, 0, device=device)).shape == (3, 0)
    with pytest.raises(ValueError, match="fp32, fp16 or bf16"):
        softmax.fused_softmax(torch.zeros(3, 4, dtype=torch.float64, device=device))
    with pytest.raises(ValueError, match="Tq <= Tk"):
        softmax.fused_softmax(torch.zeros(5, 4, device=device), causal=True)
    with pytest.raises(ValueError, match="Tq <= Tk"):
        softmax.fused_softmax(torch.zeros(4, device=device), causal=True)


@cuda
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [1000, 3 * softmax.MAX_BLOCK_N + 5])
def test_bf16_on_gpu(n, causal, device):
    check_against_reference(_randn(4, 64, n, dtype=torch.bfloat16, device=device),
                            _randn(4, 64, n, dtype=torch.bfloat16, device=device, seed=1), scale=0.7, causal=causal)
