"""FlashAttention-2 kernel (`kernels.flash_attention`) against the fp32 reference (`kernels.reference`).

On a CPU-only machine the kernels run in the Triton interpreter (see conftest.py), whose tiles are 64x32 (forward)
and 32x64 (backward): the lengths below (1, 7, 65, 130, ...) cross zero, one and several tile boundaries, and
from T = 65 on, causal and windowed runs have wholly visible tiles (the unmasked loop) as well as edge tiles.
The backward runs both ways: dQ by atomic adds (the default) and ``deterministic=True`` (no atomics).
Cost under the interpreter grows with B·H·(T/64)·(T/32); keep shapes small.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.flash_attention import flash_attention
from kernels.reference import attention_reference
from kernels.tolerances import TOLERANCES
from tests.test_kernel_flash_sizes import _flash, _inputs, _run, check_against_reference

SHAPES = [  # (B, H, Tq, Tk, D)
    (1, 1, 1, 1, 16),
    (2, 1, 7, 7, 32),
    (1, 2, 65, 65, 64),
    (1, 1, 130, 130, 128),
    (2, 1, 30, 100, 64),  # Tq < Tk: queries aligned to the end of the keys
    (1, 1, 1, 77, 32),  # one query against a cache of keys (decoding)
    (1, 1, 40, 40, 24),  # head dim that is not a power of two (tiles padded to 32)
]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fp32_matches_reference(shape, causal, device):
    check_against_reference(*shape, torch.float32, device, causal=causal)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 130, 130, 64), (2, 1, 30, 100, 32)], ids=lambda s: "x".join(map(str, s)))
def test_deterministic_backward_matches_reference(shape, causal, device):
    check_against_reference(*shape, torch.float32, device, causal=causal, deterministic=True)
    check_against_reference(*shape, torch.float16, device, causal=causal, deterministic=True, window=40,
                            key_lengths=torch.tensor([shape[3], 61][:shape[0]], device=device))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(1, 2, 65, 65, 64), (1, 1, 130, 130, 128), (2, 1, 30, 100, 16)],
                         ids=lambda s: "x".join(map(str, s)))
def test_fp16_matches_reference(shape, causal, device):
    check_against_reference(*shape, torch.float16, device, causal=causal)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("tq", [70, 100])
def test_key_lengths(tq, causal, dtype, device):
    """Right-padded batch, lengths 0 (all padding), 1, partial and full: padded rows are zero with lse = -inf and
    zero gradient, padded keys get zero gradient, nothing is NaN."""
    lengths = torch.tensor([0, 1, 57, 100], device=device)
    shift = 100 - tq
    o, lse, (dq, dk, dv) = check_against_reference(4, 1, tq, 100, 32, dtype, device, causal=causal,
                                                   key_lengths=lengths)
    for b, length in enumerate(lengths.tolist()):
        pad_q = slice(max(length - shift, 0), None)  # query rows at or past the sequence length
        assert (o[b, :, pad_q] == 0).all() and (dq[b, :, pad_q] == 0).all()
        assert (lse[b, :, pad_q] == float("-inf")).all()
        assert (dk[b, :, length:] == 0).all() and (dv[b, :, length:] == 0).all()


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_padding_contents_never_leak(causal, deterministic, device):
    """Whatever the padding holds, even NaN, is never read: results equal those with clean padding."""
    lengths, tq, tk = torch.tensor([37, 0, 100], device=device), 80, 100
    q, k, v, do = _inputs(3, 1, tq, tk, 16, torch.float32, device)
    q_bad, k_bad, v_bad, do_bad = (x.clone() for x in (q, k, v, do))
    for b, length in enumerate(lengths.tolist()):
        k_bad[b, :, length:] = v_bad[b, :, length:] = float("nan")
        q_bad[b, :, max(length - (tk - tq), 0):] = do_bad[b, :, max(length - (tk - tq), 0):] = float("nan")
    kw = dict(causal=causal, key_lengths=lengths, deterministic=deterministic)
    o, lse, grads = _run(_flash, q, k, v, do, **kw)
    o_bad, lse_bad, grads_bad = _run(_flash, q_bad, k_bad, v_bad, do_bad, **kw)
    for clean, poisoned in zip((o, lse, *grads), (o_bad, lse_bad, *grads_bad)):
        torch.testing.assert_close(poisoned, clean, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [1, 16, 50])
def test_window(window, causal, device):
    check_against_reference(1, 2, 130, 130, 32, torch.float32, device, causal=causal, window=window)


@pytest.mark.parametrize("deterministic", [False, True])
def test_window_with_lengths_and_shorter_queries(deterministic, device):
    check_against_reference(2, 1, 90, 150, 64, torch.float32, device, causal=True, window=33,
                            key_lengths=torch.tensor([150, 80], device=device), deterministic=deterministic)


@pytest.mark.parametrize("causal, deterministic", [(False, False), (True, True)])
def test_window_skips_blocks_outside_it(causal, deterministic, device):
    """Tiles outside every window must not be visited at all, not just masked: poison far-away keys/values with
    NaN (0 · NaN = NaN, so a visited-but-masked tile would leak it) and check distant rows stay exact. Any tiles up
    to 128 wide are far enough away, so this holds for every autotune config."""
    t, w, far = 600, 16, 16 + 2 * 128 + 16  # poison the first and last w positions; rows [far, t - far) are
    q, k, v, do = _inputs(1, 1, t, t, 32, torch.float32, device)  # more than w + two tiles away from them
    bad = [x.clone() for x in (q, k, v, do)]
    for x in bad:
        x[:, :, :w] = x[:, :, -w:] = float("nan")
    rows = slice(far, t - far)
    o, _, (dq, dk, dv) = _run(_flash, *bad, causal=causal, window=w, deterministic=deterministic)
    o_ref, _, (dq_ref, dk_ref, dv_ref) = _run(attention_reference, q, k, v, do, causal=causal, window=w)
    tol = TOLERANCES[torch.float32]
    torch.testing.assert_close(o[:, :, rows], o_ref[:, :, rows], **tol)  # forward skipped the poisoned keys
    torch.testing.assert_close(dq[:, :, rows], dq_ref[:, :, rows], **tol)  # dQ (atomic or not) skipped them
    # dK/dV: key rows far from the poisoned queries (dO) never visit them
    torch.testing.assert_close(dk[:, :, rows], dk_ref[:, :, rows], **tol)
    torch.testing.assert_close(dv[:, :, rows], dv_ref[:, :, rows], **tol)


def test_rows_with_no_visible_key_are_zero_not_nan(device):
    """Every key padded, in every mode: zeros, lse -inf, zero (finite) gradients."""
    q, k, v, do = _inputs(2, 2, 9, 9, 16, torch.float32, device)
    for causal in (False, True):
        o, lse, grads = _run(_flash, q, k, v, do, causal=causal, window=3,
                             key_lengths=torch.zeros(2, dtype=torch.int64, device=device))
        assert (o == 0).all() and (lse == float("-inf")).all()
        assert all((g == 0).all() for g in grads)


def test_custom_scale_noncontiguous_inputs_and_plain_output(device):
    q, k, v, do = _inputs(1, 3, 20, 20, 32, torch.float32, device)
    q_t, k_t, v_t = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v))  # (B, T, H, D) memory
    assert not q_t.is_contiguous()
    o = flash_attention(q_t, k_t, v_t, causal=True, scale=0.3)
    assert isinstance(o, torch.Tensor)
    o_ref, _ = attention_reference(q, k, v, causal=True, scale=0.3)
    torch.testing.assert_close(o, o_ref, **TOLERANCES[torch.float32])


def test_finite_differences(device):
    """The backward is the derivative of the forward: central differences of the kernel's own forward (fp32,
    step 1e-2, error ~ step² + 1e-7/step ≈ 1e-4) against its analytic gradient, with every mask on."""
    q, k, v, do = _inputs(2, 1, 6, 9, 16, torch.float32, device, seed=1)
    kw = dict(causal=True, window=4, key_lengths=torch.tensor([9, 7], device=device), scale=0.7)

    def loss(q, k, v):
        return (flash_attention(q, k, v, **kw) * do).sum().item()

    _, _, grads = _run(_flash, q, k, v, do, **kw)
    gen = torch.Generator().manual_seed(2)
    eps = 1e-2
    for i, (x, grad) in enumerate(zip((q, k, v), grads)):
        for flat in torch.randint(0, x.numel(), (8,), generator=gen).tolist():
            idx = torch.unravel_index(torch.tensor(flat), x.shape)
            plus, minus = x.clone(), x.clone()
            plus[idx] += eps
            minus[idx] -= eps
            args = [[plus if j == i else t for j, t in enumerate((q, k, v))],
                    [minus if j == i else t for j, t in enumerate((q, k, v))]]
            numeric = (loss(*args[0]) - loss(*args[1])) / (2 * eps)
            assert math.isclose(grad[idx].item(), numeric, abs_tol=1e-3, rel_tol=1e-2), ("qkv"[i], idx)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    tq=st.integers(1, 80), extra_keys=st.integers(0, 50), d=st.sampled_from([16, 32, 40]), causal=st.booleans(),
    window=st.one_of(st.none(), st.integers(1, 60)), lengths=st.lists(st.integers(0, 130), min_size=2, max_size=2),
    deterministic=st.booleans(),
)
def test_random_masks_match_reference(tq, extra_keys, d, causal, window, lengths, deterministic):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    check_against_reference(2, 1, tq, tq + extra_keys, d, torch.float32, device, causal=causal, window=window,
                            key_lengths=torch.tensor(lengths, device=device), deterministic=deterministic)


@pytest.mark.parametrize("bad, match", [
    (dict(q=torch.zeros(1, 1, 4, 16)[0]), "4-D"),
    (dict(q=torch.zeros(1, 1, 4, 16, dtype=torch.float64)), "fp16, bf16 or fp32"),
    (dict(q=torch.zeros(1, 1, 9, 16)), "exceeds key length"),
    (dict(k=torch.zeros(1, 2, 8, 16)), "shape"),
    (dict(q=torch.zeros(1, 1, 4, 256), k=torch.zeros(1, 1, 8, 256), v=torch.zeros(1, 1, 8, 256)), "head dim"),
    (dict(window=0), "window"),
    (dict(scale=-0.5), "scale"),
    (dict(key_lengths=torch.tensor([1.0])), "key_lengths"),
    (dict(key_lengths=torch.tensor([1, 2])), "key_lengths"),
])
def test_invalid_arguments_raise(bad, match, device):
    args = dict(q=torch.zeros(1, 1, 4, 16), k=torch.zeros(1, 1, 8, 16), v=torch.zeros(1, 1, 8, 16))
    args.update(bad)
    args = {n: a.to(device) if isinstance(a, torch.Tensor) else a for n, a in args.items()}
    with pytest.raises(ValueError, match=match):
        flash_attention(args.pop("q"), args.pop("k"), args.pop("v"), **args)
