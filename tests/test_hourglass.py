"""Hourglass models (charformer.hourglass): causal for any K and T, the plain model at K = 1, padding invisible to
an encoder, cached decoding equal to uncached, checkpoints and LoRA as for the plain model."""

import pytest
import torch

from charformer.checkpoint import load_checkpoint, save_checkpoint
from charformer.generate import generate
from charformer.peft import apply_method
from charformer.vocab import CharVocab
from tests.helpers import tiny_model, train_next_char

TOL = dict(atol=2e-6, rtol=1e-5)


def hourglass(k, **overrides):
    return tiny_model(n_layers=4, shorten=k, shorten_layers=[1, 2, 1], **overrides)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("maps", [("mean", "repeat"), ("linear", "linear")])
def test_no_logit_sees_a_later_character(k, maps):
    model = hourglass(k, shorten_pool=maps[0], shorten_upsample=maps[1])
    # Break the mean/repeat initialisation of the linear maps, so that every slot differs.
    torch.manual_seed(1)
    for p in model.hourglass.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    x = torch.randint(0, 50, (1, 19))  # odd T, not a multiple of any K tried
    base = model(x)
    for t in range(19):
        changed = x.clone()
        changed[0, t] = (x[0, t] + 1) % 50
        moved = (model(changed) - base).abs().amax(dim=-1)[0]  # (T,)
        assert t == 0 or moved[:t].max() == 0, f"K={k}: changing character {t} moved an earlier logit"
        assert moved[t:].max() > 0  # the change reaches position t itself (through the full-resolution layers)


@pytest.mark.parametrize("causal", [True, False])
def test_k1_is_the_plain_model(causal):
    plain = tiny_model(n_layers=4, causal=causal)
    k1 = hourglass(1, causal=causal)
    k1.load_state_dict(plain.state_dict())
    x = torch.randint(0, 50, (2, 17))
    lengths = torch.tensor([17, 6])
    # The hourglass adds the middle layers' update z' - z to x, so the result is the plain x + ... up to rounding.
    torch.testing.assert_close(k1(x, lengths=lengths)[0], plain(x, lengths=lengths)[0], **TOL)
    torch.testing.assert_close(k1(x[1:, :6]), plain(x[1:, :6]), **TOL)


@pytest.mark.parametrize("pool", ["mean", "linear", "gbst"])
def test_encoder_padding_is_invisible(pool):
    model = hourglass(3, causal=False, shorten_pool=pool, shorten_upsample="linear")
    x = torch.randint(0, 50, (3, 14))
    lengths = torch.tensor([14, 8, 5])
    batched = model(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(batched[b, :n], model(x[b : b + 1, :n])[0], **TOL)
    # A bidirectional hourglass does see later characters (within and across groups).
    changed = x[:1].clone()
    changed[0, 13] = (changed[0, 13] + 1) % 50
    assert (model(changed) - model(x[:1]))[0, 0].abs().max() > 0


@pytest.mark.parametrize("k", [2, 3])
def test_cached_generation_equals_uncached(k):
    model = hourglass(k, block_size=16, shorten_upsample="linear", shorten_pool="linear")
    prompt = torch.randint(7, 50, (2, 5))
    # 25 new characters: past block_size, so the cache is refilled from a sliding window once.
    ids, logits = generate(model, prompt, 25, temperature=0, return_logits=True)
    ids_ref, logits_ref = generate(model, prompt, 25, temperature=0, return_logits=True, use_cache=False)
    assert torch.equal(ids, ids_ref)
    for a, b in zip(logits, logits_ref):
        torch.testing.assert_close(a, b, **TOL)


def test_the_shortened_layers_cache_ceil_t_over_k_groups():
    model = hourglass(3, block_size=32)
    cache = model.new_cache(1, 32)
    model(torch.randint(0, 50, (1, 7)), cache=cache)
    assert cache.short.k[0].shape[2] == 11 and cache.full.k[0].shape[2] == 32
    assert (cache.length, cache.short.length) == (7, 3)
    for _ in range(3):  # characters 7, 8, 9: group 3 (characters 7..9) is complete with character 9
        model(torch.randint(0, 50, (1, 1)), cache=cache)
    assert (cache.length, cache.short.length) == (10, 4)


def test_checkpoint_round_trip(tmp_path):
    model = hourglass(2, shorten_pool="linear", window=8)
    vocab = CharVocab(chr(0x4E00 + i) for i in range(model.cfg.vocab_size - 7))
    save_checkpoint(tmp_path / "ck", model, model.cfg, vocab)
    loaded, _, meta = load_checkpoint(tmp_path / "ck")
    assert meta["model"]["shorten_layers"] == [1, 2, 1] and loaded.cfg == model.cfg
    x = torch.randint(0, 50, (2, 21))
    assert torch.equal(model(x), loaded(x))


def test_lora_on_an_hourglass():
    model = hourglass(2).train()
    x = torch.randint(0, 50, (4, 17))
    base = model(x).detach()
    apply_method(model, "lora", r=8, targets="all")
    torch.testing.assert_close(model(x), base, **TOL)  # B = 0: the adapted model starts as the base
    losses = train_next_char(model, x, steps=20, lr=3e-2)
    assert min(losses[-5:]) < losses[0] - 0.1
    mid = model.blocks[1].attn.q_proj.lora  # a shortened layer's adapter trained too
    assert mid.B.abs().max() > 0 and not model.tok_emb.weight.requires_grad


@pytest.mark.parametrize("bad", [dict(shorten=2), dict(shorten=2, shorten_layers=[1, 1, 1]),
                                 dict(shorten=2, shorten_layers=[2, 0, 2]),
                                 dict(shorten=2, shorten_layers=[1, 2, 1], shorten_pool="gbst")])
def test_bad_configs_are_refused(bad):
    with pytest.raises(ValueError):
        tiny_model(n_layers=4, **bad)
