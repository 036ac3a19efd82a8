"""CharTransformer: causality, bidirectionality, padding, attention implementations, learning, FLOPs."""

import pytest
import torch
import torch.nn.functional as F

from charformer.model import ModelConfig
from tests.helpers import tiny_model


def test_causal_model_does_not_see_the_future():
    model = tiny_model()
    x = torch.randint(7, 50, (2, 16))
    y = x.clone()
    y[:, 10] = (y[:, 10] + 1 - 7) % 43 + 7  # change one character
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=1e-6)
    assert (a[:, 10:] - b[:, 10:]).abs().max() > 1e-4


def test_bidirectional_model_sees_the_future():
    model = tiny_model(causal=False)
    x = torch.randint(7, 50, (1, 16))
    y = x.clone()
    y[0, 10] = (y[0, 10] + 1 - 7) % 43 + 7
    with torch.no_grad():
        assert (model(x)[:, :10] - model(y)[:, :10]).abs().max() > 1e-4


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("impl", ["sdpa", "naive"])
def test_padded_batch_matches_each_sequence_alone(causal, impl):
    model = tiny_model(causal=causal, attn_impl=impl)
    lengths = [16, 9, 1]
    seqs = [torch.randint(7, 50, (n,)) for n in lengths]
    batch = torch.zeros(3, 16, dtype=torch.long)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = s
    with torch.no_grad():
        padded = model(batch, lengths=torch.tensor(lengths))
        for i, s in enumerate(seqs):
            alone = model(s[None])
            torch.testing.assert_close(padded[i, : len(s)], alone[0], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(padded).all()


@pytest.mark.parametrize("causal", [True, False])
def test_sdpa_and_naive_attention_agree(causal):
    a = tiny_model(causal=causal, attn_impl="sdpa")
    b = tiny_model(causal=causal, attn_impl="naive")
    b.load_state_dict(a.state_dict())
    x = torch.randint(7, 50, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)


def test_padded_positions_get_no_gradient_nan():
    model = tiny_model(causal=False).train()
    x = torch.randint(7, 50, (2, 8))
    out = model(x, lengths=torch.tensor([8, 0]))
    out[0].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_tiny_model_overfits_one_batch():
    model = tiny_model().train()
    x = torch.randint(7, 50, (4, 32))
    inputs, targets = x[:, :-1], x[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.5  # about ln(50): chance level at the start
    assert loss.item() < 0.1


def test_weights_are_tied_and_params_counted_once():
    model = tiny_model()
    assert model.lm_head.weight is model.tok_emb.weight
    c = model.cfg
    per_layer = 4 * c.d_model**2 + 2 * c.d_model * c.d_ff + 2 * c.d_model  # attention, MLP, two norms
    assert model.num_params() == c.vocab_size * c.d_model + c.n_layers * per_layer + c.d_model


def test_flops_per_token_formula():
    model = tiny_model()
    c = model.cfg
    n_matmul = c.vocab_size * c.d_model + c.n_layers * (4 * c.d_model**2 + 2 * c.d_model * c.d_ff)
    assert model.flops_per_token(10) == 2 * n_matmul + 4 * c.n_layers * 10 * c.d_model


def test_too_long_input_and_bad_config_are_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(vocab_size=10, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="attn_impl"):
        ModelConfig(vocab_size=10, attn_impl="flash")


def test_half_precision_cast_keeps_rotary_angles():
    model = tiny_model()
    expected = model._rotations(0, 32).clone()
    model = model.to(torch.bfloat16)
    assert torch.equal(model._rotations(0, 32), expected)  # still fp32-exact complex rotations
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(7, 50, (1, 16)))).all()


def test_rope_scores_depend_only_on_relative_position():
    from charformer.model import apply_rope, rope_tables

    rot = rope_tables(8, 64, 10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    score = lambda m, n: (apply_rope(q, rot[m : m + 1]) * apply_rope(k, rot[n : n + 1])).sum()  # noqa: E731
    torch.testing.assert_close(score(10, 3), score(57, 50), rtol=1e-5, atol=1e-5)
    assert (score(10, 3) - score(10, 4)).abs() > 1e-3


def test_selected_logits_are_the_rows_of_the_full_logits():
    model = tiny_model(causal=False).eval()
    idx = torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(0))
    select = torch.rand(3, 12, generator=torch.Generator().manual_seed(1)) < 0.3
    with torch.no_grad():
        full, picked = model(idx), model(idx, select=select)
    assert picked.shape == (int(select.sum()), model.cfg.vocab_size)
    torch.testing.assert_close(picked, full[select], rtol=0, atol=1e-6)
