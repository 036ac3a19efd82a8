"""Autoregressive sampling from a causal `CharTransformer`, with a KV cache.

Each step feeds only the newest character and reuses the keys/values of earlier ones (`KVCache`; for an
hourglass model an `HourglassCache`, whose shortened layers hold one entry per group of K characters; both from
`CharTransformer.new_cache`), so a step costs O(T) instead of re-running the whole context. The cache covers `block_size` positions; once the context
is longer, the model sees a sliding window of the last `block_size` characters, which cached decoding must
recompute (the hidden states of every kept character change when the oldest one leaves). Cached and uncached
decoding therefore compute the same logits at every step (`tests/test_generate.py`).

Sampling follows the usual recipe: divide logits by the temperature, keep the top-k, then the smallest set
whose probability reaches top-p (nucleus sampling, Holtzman et al. 2020), and draw from a seeded generator.
`generate_steps` yields the new characters one step at a time (for streaming); `generate` collects them.
Many sequences that start and stop at different times share forward passes in `charformer.batch_decode`.
"""

from __future__ import annotations

from typing import Iterator

import torch

from .model import CharTransformer


def filter_logits(logits: torch.Tensor, *, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the top-p nucleus. logits: ``(B, V)`` float."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens ranked above it already reach top_p; the top token always stays.
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def seeded_generator(seed: int | None, device) -> torch.Generator:
    """A random generator for sampling, seeded with `seed`, or from the OS when None."""
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(seed)
    else:
        gen.seed()
    return gen


def sample_next(logits: torch.Tensor, *, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator) -> torch.Tensor:
    """The next ids ``(B, 1)`` int64 drawn from next-token logits ``(B, V)`` float (argmax at temperature 0)."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    probs = filter_logits(logits / temperature, top_k=top_k, top_p=top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def generate_steps(
    model: CharTransformer,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The steps of `generate`, one at a time: yields ``(next_id, logits)`` per new token, next_id ``(B, 1)``
    int64 and the next-token logits ``(B, V)`` float32 (before temperature and filtering). A caller that
    streams text (`charformer.serve`) reads one step, sends it, and may stop early by closing the iterator.
    Arguments and errors as for `generate`."""
    if not model.cfg.causal:
        raise ValueError("generation needs a causal model (causal=True)")
    model.eval()
    block = model.cfg.block_size
    gen = seeded_generator(seed, idx.device)
    cache = None
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        if not use_cache:
            logits = model(idx[:, -block:])[:, -1]
        else:
            if cache is None or cache.length >= block:
                # First step, or the cache is full: (re)fill it with the last block_size characters.
                cache = model.new_cache(idx.shape[0], block)
                logits = model(idx[:, -block:], cache=cache)[:, -1]
            else:
                logits = model(idx[:, -1:], cache=cache)[:, -1]
        logits = logits.float()
        next_id = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)
        if eos_id is not None:
            next_id = next_id.masked_fill(finished[:, None], eos_id)
            finished |= next_id[:, 0] == eos_id
        idx = torch.cat([idx, next_id], dim=1)
        yield next_id, logits
        if eos_id is not None and finished.all():
            break


def generate(
    model: CharTransformer,
    idx: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
    return_logits: bool = False,
):
    """Continue each sequence of prompt ids idx ``(B, T0)`` (int64, T0 >= 1) by up to `max_new_tokens`.

    temperature 0 means greedy decoding. Stops early once every sequence has produced `eos_id`.
    Returns the ids ``(B, T0 + n)``; with `return_logits`, also the list of next-token logits ``(B, V)`` of
    each step (before temperature and filtering), which is how the tests compare cached and uncached decoding.
    Raises ValueError for a bidirectional model.
    """
    steps = list(generate_steps(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                seed=seed, eos_id=eos_id, use_cache=use_cache))
    idx = torch.cat([idx, *(next_id for next_id, _ in steps)], dim=1)
    all_logits = [logits for _, logits in steps]
    return (idx, all_logits) if return_logits else idx
