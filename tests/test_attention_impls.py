"""Every attention implementation trains and generates the same model (Triton ones under the interpreter)."""

import pytest
import torch
import torch.nn.functional as F

from charformer.attention import attention
from charformer.generate import generate
from kernels.reference import attention_reference
from kernels.tolerances import TOLERANCES
from tests.helpers import tiny_model

IMPLS = ["naive", "fused_softmax", "triton"]


def _loss_and_grads(model, x, lengths):
    logits = model(x[:, :-1], lengths=lengths)
    mask = torch.arange(x.shape[1] - 1)[None] < lengths[:, None]
    loss = F.cross_entropy(logits[mask], x[:, 1:][mask])
    model.zero_grad()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("causal", [True, False])
def test_training_step_matches_sdpa(impl, causal, device):
    ref = tiny_model(causal=causal, attn_impl="sdpa", block_size=16).to(device).train()
    other = tiny_model(causal=causal, attn_impl=impl, block_size=16).to(device).train()
    x = torch.randint(7, 50, (3, 17), device=device)
    lengths = torch.tensor([16, 9, 1], device=device)
    loss_ref, grads_ref = _loss_and_grads(ref, x, lengths)
    loss, grads = _loss_and_grads(other, x, lengths)
    tol = TOLERANCES[torch.float32]
    torch.testing.assert_close(loss, loss_ref, **tol)
    for name, g in grads_ref.items():
        torch.testing.assert_close(grads[name], g, **tol, msg=name)


@pytest.mark.parametrize("impl", IMPLS)
def test_cached_generation_matches_sdpa(impl, device):
    ref = tiny_model(attn_impl="sdpa", block_size=16).to(device)
    other = tiny_model(attn_impl=impl, block_size=16).to(device)
    prompt = torch.randint(7, 50, (1, 4), device=device)
    ids_ref, logits_ref = generate(ref, prompt, 14, temperature=0, return_logits=True)
    ids, logits = generate(other, prompt, 14, temperature=0, return_logits=True)
    assert torch.equal(ids, ids_ref)
    for a, b in zip(logits, logits_ref):
        torch.testing.assert_close(a, b, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("tq", [8, 5])  # 5: queries aligned to the end of 8 keys (a prefix or a cache before them)
def test_sdpa_equals_the_reference_on_padded_batches(causal, tq):
    # Every row, padding included: real rows attend only to real keys, rows past a length (and a length-0
    # sequence) are zero, as kernels.reference specifies; the bidirectional case takes a cheaper mask path.
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 2, tq, 16, generator=g)
    k, v = torch.randn(2, 4, 2, 8, 16, generator=g)
    lengths = torch.tensor([8, 6, 1, 0])
    out = attention(q, k, v, causal=causal, key_lengths=lengths, impl="sdpa")
    ref = attention_reference(q, k, v, causal=causal, key_lengths=lengths)[0]
    torch.testing.assert_close(out, ref, **TOLERANCES[torch.float32])
    real = (torch.arange(tq) + 8 - tq)[None, :] < lengths[:, None]  # (B, tq): query position < length
    assert torch.equal(out.abs().amax(dim=(1, 3)) > 0, real)


WINDOW_CASES = [(8, 8, 3), (5, 13, 4), (1, 13, 4), (13, 13, 20), (17, 17, 1), (31, 64, 7)]  # (Tq, Tk, window)


@pytest.mark.parametrize("impl", ["local", "flex"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("tq,tk,window", WINDOW_CASES)
def test_window_impls_equal_the_reference(impl, causal, tq, tk, window):
    # Windows smaller and larger than T, queries aligned to the end of longer keys, padded and empty sequences.
    g = torch.Generator().manual_seed(tq * 100 + tk)
    q = torch.randn(3, 2, tq, 8, generator=g)
    k, v = torch.randn(2, 3, 2, tk, 8, generator=g)
    for lengths in (None, torch.tensor([tk, tk - 3, 0])):
        ref = attention_reference(q, k, v, causal=causal, key_lengths=lengths, window=window)[0]
        with torch.no_grad():
            out = attention(q, k, v, causal=causal, key_lengths=lengths, window=window, impl=impl)
        torch.testing.assert_close(out, ref, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("causal", [True, False])
def test_local_attention_gradients_equal_the_reference(causal):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 2, 11, 8, generator=g, requires_grad=True)
    k, v = (torch.randn(2, 2, 19, 8, generator=g, requires_grad=True) for _ in range(2))
    lengths = torch.tensor([19, 12])
    grads = []
    for impl in ("local", "naive"):
        out = attention(q, k, v, causal=causal, key_lengths=lengths, window=5, impl=impl)
        grads.append(torch.autograd.grad((out * torch.linspace(-1, 1, 8)).sum(), (q, k, v)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **TOLERANCES[torch.float32])


def test_local_needs_a_window_and_flex_refuses_a_cpu_backward():
    q = torch.randn(1, 1, 4, 8, requires_grad=True)
    with pytest.raises(ValueError, match="window"):
        attention(q, q, q, causal=True, impl="local")
    with pytest.raises(ValueError, match="backward"):
        attention(q, q, q, causal=True, window=2, impl="flex")


@pytest.mark.parametrize("shorten", [1, 2])
def test_windowed_model_trains_and_generates_alike_with_local_and_sdpa(shorten):
    layers = dict(n_layers=4, shorten=shorten, shorten_layers=[1, 2, 1]) if shorten > 1 else {}
    ref = tiny_model(attn_impl="sdpa", block_size=16, window=5, **layers).train()
    local = tiny_model(attn_impl="local", block_size=16, window=5, **layers).train()
    x = torch.randint(7, 50, (3, 17))
    lengths = torch.tensor([16, 9, 1])
    loss_ref, grads_ref = _loss_and_grads(ref, x, lengths)
    loss, grads = _loss_and_grads(local, x, lengths)
    torch.testing.assert_close(loss, loss_ref, **TOLERANCES[torch.float32])
    for name, g in grads_ref.items():
        torch.testing.assert_close(grads[name], g, **TOLERANCES[torch.float32], msg=name)
    prompt = torch.randint(7, 50, (1, 3))
    ids_ref = generate(ref, prompt, 20, temperature=0)
    assert torch.equal(generate(local, prompt, 20, temperature=0), ids_ref)
