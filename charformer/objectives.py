"""Pretraining objectives on raw character streams, in the form `charformer.train.fit` expects.

`CausalLM` is next-character prediction (Shannon's game): the loss is the cross-entropy in nats per character;
divided by ln 2 it is **bits per character** (bpc), the standard unit of character-level language modelling
(Graves 2013), independent of vocabulary size.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX, random_windows, sequential_windows
from .generate import generate
from .vocab import CharVocab

LN2 = math.log(2)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy (nats) of logits ``(B, T, V)`` against targets ``(B, T)``, skipping `IGNORE_INDEX`."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction=reduction)


class CausalLM:
    """Next-character prediction on random windows of `train_tokens`; evaluation on `val_tokens`.

    Periodic evaluations score a fixed subset (`eval_batches` batches of consecutive windows from the start of
    the validation text) to stay cheap; `evaluate_full` scores every validation character exactly once.
    """

    metric = "loss"
    higher_is_better = False

    def __init__(self, train_tokens: np.ndarray, val_tokens: np.ndarray, vocab: CharVocab, *, block_size: int,
                 batch_size: int, eval_batches: int = 20, sample_prompt: str = "\n", sample_chars: int = 200):
        self.train_tokens, self.val_tokens, self.vocab = train_tokens, val_tokens, vocab
        self.block_size, self.batch_size, self.eval_batches = block_size, batch_size, eval_batches
        self.sample_prompt, self.sample_chars = sample_prompt, sample_chars

    def batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return random_windows(self.train_tokens, self.block_size, self.batch_size, generator)

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        x, y = batch
        return lm_loss(model(x), y), x.numel()

    def _score(self, model, max_batches: int | None) -> dict[str, float]:
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for i, (x, y) in enumerate(sequential_windows(self.val_tokens, self.block_size, self.batch_size)):
            if max_batches is not None and i >= max_batches:
                break
            x, y = x.to(device), y.to(device)
            total += lm_loss(model(x), y, reduction="sum").item()
            count += int((y != IGNORE_INDEX).sum())
        loss = total / count
        return {"loss": loss, "bpc": loss / LN2, "chars": count}

    def evaluate(self, model) -> dict[str, float]:
        return self._score(model, self.eval_batches or None)

    def evaluate_full(self, model) -> dict[str, float]:
        """Loss (nats/char) and bpc over every character of the validation text."""
        return self._score(model, None)

    def report(self, model) -> str:
        return "sample: " + sample_text(model, self.vocab, self.sample_prompt, self.sample_chars, seed=0)


def sample_text(model, vocab: CharVocab, prompt: str, n_chars: int, *, seed: int | None = None, **kwargs) -> str:
    """Continue `prompt` by `n_chars` characters (prompt included in the result)."""
    device = next(model.parameters()).device
    ids = vocab.encode(prompt) or vocab.encode("\n")  # an empty prompt starts at a line break
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out = generate(model, idx, n_chars, seed=seed, **kwargs)
    return prompt + vocab.decode(out[0, len(ids):].tolist())
