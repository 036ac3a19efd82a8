"""Every attention implementation trains and generates the same model (Triton ones under the interpreter)."""

import pytest
import torch
import torch.nn.functional as F

from charformer.generate import generate
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
