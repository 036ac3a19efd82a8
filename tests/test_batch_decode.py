"""Continuous batching (`charformer.batch_decode`) against `generate` run one request at a time: prompts of
different lengths (some longer than block_size), requests joining at different steps, a cancelled one,
greedy and seeded sampling with their own settings, a sliding window, and an hourglass model."""

import pytest
import torch

from charformer.batch_decode import BatchDecoder, DecodeRequest
from charformer.generate import generate
from charformer.model import CharTransformer, ModelConfig

EOS = 3


def _model(**overrides) -> CharTransformer:
    torch.manual_seed(0)
    cfg = dict(vocab_size=29, block_size=12, n_layers=2, n_heads=2, d_model=16)
    model = CharTransformer(ModelConfig(**{**cfg, **overrides}))
    with torch.no_grad():  # larger weights than the 0.02-std init: peaked, varied next-id distributions
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5)
    return model.eval()


def _requests() -> list[DecodeRequest]:
    prompts = [[5], [7, 8, 9, 10, 11], list(range(5, 20)), [20, 21], [6, 6, 6, 9, 10, 12, 14, 15, 17]]
    settings = [dict(temperature=0.0), dict(temperature=1.0, seed=1), dict(temperature=0.7, top_k=5, seed=2),
                dict(temperature=1.3, top_p=0.8, seed=3), dict(temperature=0.0)]
    lengths = [20, 9, 6, 14, 3]  # 20 new ids after a 1-id prompt pass block_size 12: the window slides
    return [DecodeRequest(p, n, eos_id=EOS, **s) for p, n, s in zip(prompts, lengths, settings)]


def _alone(model, request: DecodeRequest) -> list[int]:
    ids = generate(model, torch.tensor([request.prompt]), request.max_new_tokens, temperature=request.temperature,
                   top_k=request.top_k, top_p=request.top_p, seed=request.seed, eos_id=request.eos_id)
    return ids[0, len(request.prompt):].tolist()


def _run(decoder: BatchDecoder, requests: list[DecodeRequest], join_at: list[int]) -> list[int]:
    """Add request i at step join_at[i]; step until all are done; returns the batch size of each step."""
    sizes, step = [], 0
    while step <= max(join_at) or decoder.busy:
        for request, at in zip(requests, join_at):
            if at == step:
                decoder.add(request)
        sizes.append(len(decoder.step()))
        step += 1
    return sizes


@pytest.mark.parametrize("overrides", [{}, {"window": 4}, {"shorten": 2, "shorten_layers": [0, 1, 1]}],
                         ids=["plain", "window", "hourglass"])
def test_batched_requests_get_what_each_gets_alone(overrides):
    model = _model(**overrides)
    requests = _requests()
    expected = [_alone(model, r) for r in requests]
    assert all(len(set(e)) > 1 for e in expected[:3])  # not a model that repeats one id
    sizes = _run(BatchDecoder(model, max_batch=4), requests, join_at=[0, 0, 2, 3, 3])
    assert [r.new_ids for r in requests] == expected
    assert all(r.finished for r in requests)
    assert max(sizes) == 4  # the fifth request waited for a free row
    if "shorten" not in overrides:
        assert len(sizes) < sum(len(e) for e in expected)  # rows shared steps


def test_cancelled_and_finished_requests_leave_and_others_go_on():
    model = _model()
    requests = _requests()
    expected = [_alone(model, r) for r in requests]
    assert expected[3][-1] == EOS and len(expected[3]) < requests[3].max_new_tokens  # request 3 ends at EOS
    decoder = BatchDecoder(model, max_batch=8)
    for request in requests:
        decoder.add(request)
    decoder.step()
    decoder.step()
    requests[1].cancelled = True
    while decoder.busy:
        decoder.step()
    assert len(requests[1].new_ids) == 2 and not requests[1].finished
    assert [r.new_ids for i, r in enumerate(requests) if i != 1] == [e for i, e in enumerate(expected) if i != 1]
    assert decoder.cache.lengths.numel() == 0 and not decoder.rows


def test_ragged_decoding_step_matches_each_row_alone():
    """The logits of one decoding step over rows of lengths 1, 5 and 9 equal those of each row run alone."""
    model = _model()
    prompts = [[5], [7, 8, 9, 10, 11], [6, 6, 6, 9, 10, 12, 14, 15, 17]]
    cache = model.new_cache(len(prompts), 12, ragged=True)
    padded = torch.tensor([p + [0] * (9 - len(p)) for p in prompts])
    with torch.no_grad():
        model(padded, lengths=torch.tensor([len(p) for p in prompts]), cache=cache)
        step = model(torch.tensor([[4], [4], [4]]), cache=cache)[:, -1]  # (3, V)
        alone = torch.cat([model(torch.tensor([p + [4]]))[:, -1] for p in prompts])
    assert cache.lengths.tolist() == [2, 6, 10]
    torch.testing.assert_close(step, alone, atol=1e-5, rtol=1e-5)


def test_bad_requests_and_models_are_refused():
    with pytest.raises(ValueError, match="causal"):
        BatchDecoder(_model(causal=False), max_batch=2)
    decoder = BatchDecoder(_model(), max_batch=2)
    with pytest.raises(ValueError, match="non-empty prompt"):
        decoder.add(DecodeRequest([], 3))
    nothing = DecodeRequest([5], 0)
    decoder.add(nothing)
    assert nothing.finished and not decoder.busy and decoder.step() == []
