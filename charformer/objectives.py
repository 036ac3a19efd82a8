"""Pretraining objectives on raw character streams, in the form `charformer.train.fit` expects.

`CausalLM` is next-character prediction (Shannon's game): the loss is the cross-entropy in nats per character;
divided by ln 2 it is **bits per character** (bpc), the standard unit of character-level language modelling
(Graves 2013), independent of vocabulary size.

`MaskedLM` is BERT's masked language modelling (Devlin et al. 2019) on characters, for the bidirectional
encoder: 15% of the characters of a block are chosen; of those, 80% are replaced by ``[MASK]``, 10% by a
random character and 10% kept, and the loss is the cross-entropy of the original character at the chosen
positions only. Blocks are raw windows of the text, or (``packing="lines"``) whole lines packed and separated
by ``[SEP]``. Evaluation masks the validation blocks once, with a fixed seed, so every evaluation scores the
same positions and the figures compare across steps and runs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .data import (IGNORE_INDEX, consecutive_blocks, packed_blocks, pad_sequences, random_packed, random_windows,
                   sequential_windows)
from .errors import CharformerError
from .generate import generate
from .vocab import MASK_ID, SPECIAL_TOKENS, CharVocab

LN2 = math.log(2)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy (nats) of logits ``(B, T, V)`` against targets ``(B, T)``, skipping `IGNORE_INDEX`."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction=reduction)


def lm_scores(model, tokens: np.ndarray, *, block_size: int, batch_size: int,
              max_batches: int | None = None) -> dict[str, float]:
    """Next-character loss (nats/char), bits/char and the number of characters scored, over the text `tokens`
    in consecutive windows (every character once; only the first `max_batches` batches if given)."""
    batches = ((x, y, None) for x, y in sequential_windows(tokens, block_size, batch_size))
    total, count, _ = score_batches(model, batches, max_batches)
    loss = total / count
    return {"loss": loss, "bpc": loss / LN2, "chars": count}


def rehearsal_rows(share: float, batch_size: int) -> int:
    """Rows of a batch of `batch_size` given to the rehearsed (original) data: ``round(share x batch_size)``,
    at least one and at most ``batch_size - 1``; 0 for share 0. Raises ValueError for a share outside [0, 1)
    or, with a share, a batch of one row."""
    if not 0 <= share < 1:
        raise ValueError(f"rehearsal_share must be in [0, 1), got {share}")
    if share == 0:
        return 0
    if batch_size < 2:
        raise ValueError("rehearsal needs batch_size >= 2 (one row of the new data, one of the old)")
    return min(max(round(share * batch_size), 1), batch_size - 1)


class CausalLM:
    """Next-character prediction on random windows of `train_tokens`; evaluation on `val_tokens`.

    Periodic evaluations score a fixed subset (`eval_batches` batches of consecutive windows from the start of
    the validation text) to stay cheap; `evaluate_full` scores every validation character exactly once.

    Rehearsal (continued training on new text): with `rehearsal_tokens`, ``round(rehearsal_share x
    batch_size)`` rows of every batch (at least one when the share is positive, never all) are windows of
    that text, the original corpus, and the rest windows of `train_tokens`.
    """

    metric = "loss"
    higher_is_better = False

    def __init__(self, train_tokens: np.ndarray, val_tokens: np.ndarray, vocab: CharVocab, *, block_size: int,
                 batch_size: int, eval_batches: int = 20, sample_prompt: str = "\n", sample_chars: int = 200,
                 rehearsal_tokens: np.ndarray | None = None, rehearsal_share: float = 0.0):
        self.train_tokens, self.val_tokens, self.vocab = train_tokens, val_tokens, vocab
        self.block_size, self.batch_size, self.eval_batches = block_size, batch_size, eval_batches
        self.sample_prompt, self.sample_chars = sample_prompt, sample_chars
        self.rehearsal_tokens = rehearsal_tokens
        self.rehearsal_rows = rehearsal_rows(rehearsal_share if rehearsal_tokens is not None else 0.0, batch_size)

    def batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-character targets, each ``(batch_size, block_size)`` int64 (rehearsal rows last)."""
        x, y = random_windows(self.train_tokens, self.block_size, self.batch_size - self.rehearsal_rows, generator)
        if self.rehearsal_rows:
            xo, yo = random_windows(self.rehearsal_tokens, self.block_size, self.rehearsal_rows, generator)
            x, y = torch.cat([x, xo]), torch.cat([y, yo])
        return x, y

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        x, y = batch
        return lm_loss(model(x), y), x.numel()

    def _score(self, model, max_batches: int | None) -> dict[str, float]:
        return lm_scores(model, self.val_tokens, block_size=self.block_size, batch_size=self.batch_size,
                         max_batches=max_batches)

    def evaluate(self, model) -> dict[str, float]:
        return self._score(model, self.eval_batches or None)

    def evaluate_full(self, model) -> dict[str, float]:
        """Loss (nats/char) and bpc over every character of the validation text."""
        return self._score(model, None)

    def report(self, model) -> str:
        return "sample: " + sample_text(model, self.vocab, self.sample_prompt, self.sample_chars, seed=0)


def score_batches(model, batches, max_batches: int | None = None) -> tuple[float, int, int]:
    """Sum of the cross-entropy (nats), number of scored targets, and number predicted right (argmax), over
    batches of (inputs ``(B, T)``, targets ``(B, T)`` with `IGNORE_INDEX` where unscored, lengths ``(B,)`` or
    None), stopping after `max_batches` if given."""
    device = next(model.parameters()).device
    total, count, correct = 0.0, 0, 0
    for i, (x, y, lengths) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(device), y.to(device)
        logits = model(x, lengths=None if lengths is None else lengths.to(device))
        total += lm_loss(logits, y, reduction="sum").item()
        scored = y != IGNORE_INDEX
        count += int(scored.sum())
        correct += int((logits.argmax(-1) == y)[scored].sum())
    return total, count, correct


def mask_for_mlm(ids: torch.Tensor, generator: torch.Generator, *, vocab_size: int,
                 mask_prob: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of character ids ``(B, T)`` int64; returns (inputs, targets), both ``(B, T)`` int64.

    Each character position (id of a real character: never a special token, padding or ``[UNK]``) is chosen
    with probability `mask_prob`; a row that has characters but drew none gets one chosen at random, so every
    such row contributes to the loss. Chosen positions: input ``[MASK]`` (80%), a random character (10%) or
    unchanged (10%); target = the original id. Elsewhere the target is `IGNORE_INDEX`. Uses `generator` only.
    """
    n_special = len(SPECIAL_TOKENS)
    maskable = ids >= n_special
    chosen = (torch.rand(ids.shape, generator=generator) < mask_prob) & maskable
    empty_rows = ~chosen.any(dim=1) & maskable.any(dim=1)
    if empty_rows.any():
        # argmax of random scores over the maskable positions picks one of them uniformly
        pick = torch.rand(ids.shape, generator=generator).masked_fill(~maskable, -1.0).argmax(dim=1)
        chosen[empty_rows, pick[empty_rows]] = True
    action = torch.rand(ids.shape, generator=generator)
    random_chars = torch.randint(n_special, vocab_size, ids.shape, generator=generator)
    inputs = torch.where(chosen & (action < 0.8), MASK_ID, ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_chars, inputs)
    targets = torch.where(chosen, ids, IGNORE_INDEX)
    return inputs, targets


def check_masking(packing: str, mask_prob: float) -> None:
    """Raise ValueError unless `packing` is ``"windows"`` or ``"lines"`` and 0 < `mask_prob` < 1 (`MaskedLM`)."""
    if packing not in ("windows", "lines"):
        raise ValueError(f"packing must be 'windows' or 'lines', got {packing!r}")
    if not 0 < mask_prob < 1:
        raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")


class MaskedLM:
    """Masked-character modelling for a bidirectional model (``causal=False``).

    packing ``"windows"``: `train` and `val` are id arrays of the whole text; training draws random windows of
    `block_size` characters and evaluation walks consecutive blocks. ``"lines"``: `train` and `val` are lists
    of line segments (`charformer.data.line_segments`); blocks pack whole segments separated by ``[SEP]`` and
    right-padded, and carry their lengths so padding is invisible to attention. The validation blocks are
    masked once with `eval_seed`; periodic evaluations use the first `eval_batches` batches of them,
    `evaluate_full` all. Metrics: ``loss`` (nats per masked character), ``accuracy`` (share of masked
    characters predicted exactly), ``chars`` (masked characters scored).
    """

    metric = "loss"
    higher_is_better = False

    def __init__(self, train, val, vocab: CharVocab, *, block_size: int, batch_size: int, packing: str = "windows",
                 mask_prob: float = 0.15, eval_batches: int = 20, eval_seed: int = 0):
        check_masking(packing, mask_prob)
        self.train, self.vocab, self.packing, self.mask_prob = train, vocab, packing, mask_prob
        self.block_size, self.batch_size, self.eval_batches = block_size, batch_size, eval_batches
        blocks = consecutive_blocks(val, block_size) if packing == "windows" else packed_blocks(val, block_size)
        gen = torch.Generator().manual_seed(eval_seed)
        self.val_batches = []
        for i in range(0, len(blocks), batch_size):
            ids, lengths = pad_sequences(blocks[i : i + batch_size], width=block_size)
            inputs, targets = mask_for_mlm(ids, gen, vocab_size=len(vocab), mask_prob=mask_prob)
            self.val_batches.append((inputs, targets, lengths))
        if not any((targets != IGNORE_INDEX).any() for _, targets, _ in self.val_batches):
            raise CharformerError("the validation text has no character in the vocabulary to mask")

    def batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.packing == "windows":
            ids = random_windows(self.train, self.block_size, self.batch_size, generator)[0]
            lengths = torch.full((self.batch_size,), self.block_size, dtype=torch.int64)
        else:
            ids, lengths = random_packed(self.train, self.block_size, self.batch_size, generator)
        inputs, targets = mask_for_mlm(ids, generator, vocab_size=len(self.vocab), mask_prob=self.mask_prob)
        return inputs, targets, lengths

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        inputs, targets, lengths = batch
        # Full-length rows need no key-padding mask, which keeps attention on its fused no-mask path.
        full = self.packing == "windows"
        chosen = targets != IGNORE_INDEX
        logits = model(inputs, lengths=None if full else lengths, select=chosen)  # (N, V): chosen positions only
        return F.cross_entropy(logits.float(), targets[chosen]), int(lengths.sum())

    def _score(self, model, max_batches: int | None) -> dict[str, float]:
        total, count, correct = score_batches(model, self.val_batches, max_batches)
        return {"loss": total / count, "accuracy": correct / count, "chars": count}

    def evaluate(self, model) -> dict[str, float]:
        return self._score(model, self.eval_batches or None)

    def evaluate_full(self, model) -> dict[str, float]:
        """Masked-character loss (nats) and accuracy over every fixed-masked validation block."""
        return self._score(model, None)

    def report(self, model) -> None:
        return None


def sample_text(model, vocab: CharVocab, prompt: str, n_chars: int, *, seed: int | None = None, **kwargs) -> str:
    """Continue `prompt` by `n_chars` characters (prompt included in the result)."""
    device = next(model.parameters()).device
    ids = vocab.encode(prompt) or vocab.encode("\n")  # an empty prompt starts at a line break
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out = generate(model, idx, n_chars, seed=seed, **kwargs)
    return prompt + vocab.decode(out[0, len(ids):].tolist())
