"""Continuous batching: generation requests that start and stop at any time share forward passes.

A decoding step multiplies one vector per sequence by every weight matrix; a batch of B vectors costs little
more than one, so decoding requests one at a time wastes most of each pass. Continuous batching (Orca, Yu et
al. 2022; the scheduler of vLLM, Kwon et al. 2023) steps every active sequence together, one token each, and
changes the batch between steps:

    step:  drop cancelled rows -> admit waiting requests (up to max_batch rows)
           -> one decoding forward over the rows already cached       (B, 1) ids, a RaggedKVCache
           -> one prefill forward over the newcomers' prompts          (G, T) right-padded, their lengths
           -> draw each row's next id with its own settings and generator -> drop finished rows

Rows differ in length, and nothing is truncated or padded on the left: each row writes its new key at its
own position, takes its own rotary position and attends over its own keys only
(`charformer.model.RaggedKVCache`, `charformer.attention.decode_attention`), so each row gets what
`charformer.generate.generate` gives it alone, up to float rounding (`tests/test_batch_decode.py`). Each
request has its own temperature, top-k, top-p and `torch.Generator`, so a seeded request draws the same
characters whatever shares its batch. Past block_size characters a row is re-prefilled with its last
block_size characters at every step, the sliding window of `generate_steps`. An hourglass model keeps one
shortening state per batch, so its rows step one by one through `generate_steps` (same answers, no sharing).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import torch

from .generate import generate_steps, sample_next, seeded_generator
from .data import pad_sequences
from .model import CharTransformer


@dataclass(eq=False)
class DecodeRequest:
    """One sequence to continue: `prompt` ids (non-empty), up to `max_new_tokens` new ids, and its sampling
    settings (as for `generate`; temperature 0 is greedy). The decoder appends to `new_ids` and sets
    `finished` (at `eos_id` or the length limit); a caller sets `cancelled` (from any thread) to take the
    request out at the next step."""

    prompt: list[int]
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    eos_id: int | None = None
    new_ids: list[int] = field(default_factory=list)
    finished: bool = False
    cancelled: bool = False


@dataclass(eq=False)
class _Row:
    request: DecodeRequest
    generator: torch.Generator
    ids: list[int]  # prompt then new ids: the row's whole context
    steps: Iterator | None = None  # hourglass models: the row's own `generate_steps`


class BatchDecoder:
    """Continuous batching over `model` (a causal `CharTransformer`) with at most `max_batch` rows per step
    (see the module docstring). Not thread-safe: one thread calls `add` and `step`; only `cancelled` may be
    set from elsewhere. Raises ValueError for a bidirectional model or max_batch < 1."""

    def __init__(self, model: CharTransformer, max_batch: int):
        if not model.cfg.causal:
            raise ValueError("generation needs a causal model (causal=True)")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.max_batch = model.eval(), max_batch
        self.block = model.cfg.block_size
        self.device = model.tok_emb.weight.device
        self.ragged = model.hourglass is None
        self.waiting: deque[DecodeRequest] = deque()
        self.rows: list[_Row] = []  # in the order of the cache's rows
        self.cache = model.new_cache(0, self.block, ragged=True) if self.ragged else None

    def add(self, request: DecodeRequest) -> None:
        """Queue `request`; it joins at the next step with room. Raises ValueError for an empty prompt or a
        negative length. A request for 0 new ids is finished at once."""
        if not request.prompt or request.max_new_tokens < 0:
            raise ValueError("a request needs a non-empty prompt and max_new_tokens >= 0")
        if request.max_new_tokens == 0:
            request.finished = True
        else:
            self.waiting.append(request)

    @property
    def busy(self) -> bool:
        """Whether a request is running or waiting."""
        return bool(self.rows or self.waiting)

    @torch.inference_mode()
    def step(self) -> list[tuple[DecodeRequest, int]]:
        """Advance every running request by one id; returns ``(request, new id)`` for each, in row order
        (`request.finished` tells which ended with this id; they have left the batch)."""
        self._keep([i for i, row in enumerate(self.rows) if not row.request.cancelled])
        joining = self._admit()
        new_ids = self._ragged_step(joining) if self.ragged else self._one_by_one(joining)
        out = []
        for row, new_id in zip(self.rows, new_ids):
            request = row.request
            row.ids.append(new_id)
            request.new_ids.append(new_id)
            request.finished = new_id == request.eos_id or len(request.new_ids) == request.max_new_tokens
            out.append((request, new_id))
        self._keep([i for i, row in enumerate(self.rows) if not row.request.finished])
        return out

    def _admit(self) -> list[_Row]:
        """Rows for the waiting requests that fit in the batch (cancelled ones are dropped)."""
        joining = []
        while self.waiting and len(self.rows) + len(joining) < self.max_batch:
            request = self.waiting.popleft()
            if request.cancelled:
                continue
            row = _Row(request, seeded_generator(request.seed, self.device), list(request.prompt))
            if not self.ragged:
                row.steps = generate_steps(
                    self.model, torch.tensor([row.ids], device=self.device), request.max_new_tokens,
                    temperature=request.temperature, top_k=request.top_k, top_p=request.top_p, seed=request.seed,
                    eos_id=request.eos_id)
            joining.append(row)
        return joining

    def _keep(self, kept: list[int]) -> None:
        if len(kept) < len(self.rows):
            self.rows = [self.rows[i] for i in kept]
            if self.ragged:
                self.cache.keep(kept)

    def _ragged_step(self, joining: list[_Row]) -> list[int]:
        """One decoding forward over the cached rows, one prefill over the rest; the next id of every row."""
        full = (self.cache.lengths >= self.block).tolist()  # past block_size: re-prefill the last block_size
        refill = [row for row, f in zip(self.rows, full) if f]
        self._keep([i for i, f in enumerate(full) if not f])
        logits = []
        if self.rows:
            last = torch.tensor([[row.ids[-1]] for row in self.rows], device=self.device)  # (B, 1)
            logits.append(self.model(last, cache=self.cache)[:, -1])  # (B, V)
        prefill = refill + joining
        if prefill:
            logits.append(self._prefill(prefill))
            self.rows += prefill
        if not logits:
            return []
        logits = torch.cat(logits).float()  # (B, V), rows in self.rows order
        return [int(sample_next(row_logits[None], temperature=row.request.temperature, top_k=row.request.top_k,
                                top_p=row.request.top_p, generator=row.generator))
                for row, row_logits in zip(self.rows, logits)]

    def _prefill(self, rows: list[_Row]) -> torch.Tensor:
        """Run the last block_size ids of each row, right-padded, into a new cache appended to ours; the
        next-id logits ``(G, V)`` of each row's last position."""
        idx, lengths = pad_sequences([row.ids[-self.block :] for row in rows])  # (G, T), (G,)
        idx, lengths = idx.to(self.device), lengths.to(self.device)
        last = torch.arange(idx.shape[1], device=self.device) == (lengths - 1)[:, None]  # (G, T) bool
        cache = self.model.new_cache(len(rows), self.block, ragged=True)
        logits = self.model(idx, lengths=lengths, cache=cache, select=last)  # (G, V)
        self.cache.extend(cache)
        return logits

    def _one_by_one(self, joining: list[_Row]) -> list[int]:
        self.rows += joining
        return [int(next(row.steps)[0]) for row in self.rows]
