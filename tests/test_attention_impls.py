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
