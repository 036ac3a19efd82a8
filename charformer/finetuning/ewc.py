"""Elastic weight consolidation: remember what the weights knew by pulling the important ones back.

Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks": after learning task A to
weights theta*, learning task B adds the penalty

    lambda / 2 * sum_i F_i * (theta_i - theta*_i)^2

where F is the diagonal of the Fisher information of task A at theta*: a weight that task A's likelihood is
sensitive to (large F_i) is held close to its old value, the others are free to move. F is estimated here as
the mean, over `n_batches` batches of task A's data, of the squared gradient of the batch's mean loss (the
"empirical" Fisher of mini-batch gradients; per-example gradients would be a finer estimate at B times the
cost, and lambda absorbs the overall scale).

What task A is: for ``--task lm``, the original corpus of the language model (``--ewc-data``, for example the
text given to --rehearsal-data), scored with its next-character loss; for cws, ner and classify, the
pretraining objective of the body (next-character or masked-character, whichever it was trained with) on
``--ewc-data`` text, so fine-tuning keeps what pretraining taught; for classify from a fine-tuned classifier,
that classifier's task: its cross-entropy on its labelled training file, through its own head
(`charformer.finetuning.continual`). theta* are the weights at the start of fine-tuning.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn

from ..data import random_windows
from ..model import CharTransformer
from ..objectives import lm_loss, mask_for_mlm


def fisher_diagonal(params: dict[str, nn.Parameter],
                    losses: Iterable[Callable[[], torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean squared gradient of each parameter in `params` over `losses` (callables, each computing one batch's
    mean loss); float32 tensors shaped like the parameters, zero where a loss does not reach a parameter."""
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    count = 0
    for compute in losses:
        grads = torch.autograd.grad(compute(), list(params.values()), allow_unused=True)
        for name, g in zip(params, grads):
            if g is not None:
                fisher[name] += g.float() ** 2
        count += 1
    if count == 0:
        raise ValueError("the Fisher information needs at least one batch")
    return {name: f / count for name, f in fisher.items()}


def lm_batch_losses(body: CharTransformer, tokens, *, n_batches: int, batch_size: int, seed: int):
    """`n_batches` callables, each the language-model loss (nats/char) of `body` on random windows of `tokens`
    (an int array of character ids): next-character for a causal body, masked-character for a bidirectional one."""
    gen = torch.Generator().manual_seed(seed)
    device = next(body.parameters()).device
    block = body.cfg.block_size

    def one() -> torch.Tensor:
        x, y = random_windows(tokens, block, batch_size, gen)
        if not body.cfg.causal:
            x, y = mask_for_mlm(x, gen, vocab_size=body.cfg.vocab_size)
        return lm_loss(body(x.to(device)), y.to(device))

    return (one for _ in range(n_batches))


class EWCPenalty:
    """``lambda / 2 * sum_i F_i (theta_i - theta*_i)^2`` over `params`, theta* their values now; a callable
    returning the penalty (a scalar tensor, differentiable in the parameters)."""

    def __init__(self, params: dict[str, nn.Parameter], fisher: dict[str, torch.Tensor], lam: float):
        if lam <= 0:
            raise ValueError(f"ewc lambda must be positive, got {lam}")
        self.params, self.fisher, self.lam = params, fisher, lam
        self.anchor = {name: p.detach().clone() for name, p in params.items()}

    def __call__(self) -> torch.Tensor:
        total = sum((self.fisher[n] * (p.float() - self.anchor[n].float()) ** 2).sum() for n, p in self.params.items())
        return 0.5 * self.lam * total
