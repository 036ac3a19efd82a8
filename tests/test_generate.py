"""Generation: the KV cache changes nothing but speed; sampling filters behave."""

import pytest
import torch

from charformer.generate import filter_logits, generate
from tests.helpers import tiny_model


@pytest.mark.parametrize("impl", ["sdpa", "naive"])
def test_cached_and_uncached_decoding_give_the_same_logits(impl):
    model = tiny_model(attn_impl=impl, block_size=16)
    prompt = torch.randint(7, 50, (2, 5))
    # 30 new characters with block 16: crosses the point where the context must slide.
    ids_c, logits_c = generate(model, prompt, 30, temperature=0, use_cache=True, return_logits=True)
    ids_u, logits_u = generate(model, prompt, 30, temperature=0, use_cache=False, return_logits=True)
    assert torch.equal(ids_c, ids_u)
    for a, b in zip(logits_c, logits_u):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_seeded_sampling_is_reproducible_and_stops_at_eos():
    model = tiny_model()
    prompt = torch.tensor([[10, 11]])
    a = generate(model, prompt, 20, temperature=1.0, top_k=5, seed=3)
    b = generate(model, prompt, 20, temperature=1.0, top_k=5, seed=3)
    assert torch.equal(a, b) and a.shape == (1, 22)
    eos = int(a[0, 2])  # whatever comes first becomes the stop token
    c = generate(model, prompt, 20, temperature=1.0, top_k=5, seed=3, eos_id=eos)
    assert c.shape == (1, 3) and int(c[0, -1]) == eos


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept_k = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept_k.tolist() == [[True, True, False, False]]
    kept_p = torch.isfinite(filter_logits(logits, top_p=0.8))  # 0.5 + 0.3 reaches 0.8
    assert kept_p.tolist() == [[True, True, False, False]]
    kept_p = torch.isfinite(filter_logits(logits, top_p=0.81))
    assert kept_p.tolist() == [[True, True, True, False]]


def test_bidirectional_model_cannot_generate():
    with pytest.raises(ValueError, match="causal"):
        generate(tiny_model(causal=False), torch.tensor([[8]]), 3)
