"""R-Drop: the same batch through the model twice, under two dropout masks, and a penalty on their disagreement.

Liang et al. 2021, "R-Drop: Regularized Dropout for Neural Networks": dropout makes each forward pass a
different sub-model; R-Drop asks the two sub-models to predict the same distribution,

    loss = (L1 + L2) / 2 + alpha * (KL(P1 || P2) + KL(P2 || P1)) / 2

with L1, L2 the task losses of the two passes and P1, P2 their output distributions. (The paper sums L1 + L2
and weights the KL pair by alpha / 2; taking the mean keeps the loss on the scale of the plain one, so the
learning rate need not change.) The KL is averaged over the scored outputs: a text's label distribution, each
real character's tag distribution (padding excluded; with a CRF, the per-character softmax of its emission
scores), each predicted character of a language model. Without dropout the two passes agree and the penalty
is zero, so R-Drop needs ``--dropout`` or ``--head-dropout`` above 0. Cost: two forward and backward passes
per step.

The output distributions are read by a forward hook on the model's output layer (a task model's ``head``, a
language model's ``lm_head``), so the wrapped objective is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..model import CharTransformer
from ..tasks.heads import Tagger, real_positions


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """``(KL(P_a || P_b) + KL(P_b || P_a)) / 2`` in nats, averaged over the rows of logits ``(..., K)`` (P the
    softmax over K) where `keep` ``(...)`` bool is True (all rows if None)."""
    log_a, log_b = F.log_softmax(logits_a.float(), -1), F.log_softmax(logits_b.float(), -1)
    kl = 0.5 * ((log_a.exp() - log_b.exp()) * (log_a - log_b)).sum(-1)  # both directions at once
    return kl.mean() if keep is None else kl[keep].sum() / keep.sum().clamp(min=1)


def output_layer(model: nn.Module) -> nn.Module:
    """The layer whose output is the model's distribution: ``lm_head`` of a language model, else ``head``."""
    return model.lm_head if isinstance(model, CharTransformer) else model.head


class RDrop:
    """`objective` with the R-Drop penalty of weight `alpha` (see the module docstring); `model` is the unwrapped
    model that fit trains (its output layer is hooked). `last_kl` is the penalty of the latest batch, in nats."""

    def __init__(self, objective, model: nn.Module, alpha: float):
        if alpha <= 0:
            raise ValueError(f"rdrop alpha must be positive, got {alpha}")
        self.objective, self.alpha, self.tagger = objective, alpha, isinstance(model, Tagger)
        self.outputs: list[torch.Tensor] | None = None
        self.last_kl = float("nan")
        output_layer(model).register_forward_hook(self._hook)

    def _hook(self, module, inputs, out):
        if self.outputs is not None:
            self.outputs.append(out)

    def __getattr__(self, name):  # metric, higher_is_better, batch, evaluate, report, ...
        return getattr(self.objective, name)

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        self.outputs = []
        try:
            loss_a, n_chars = self.objective.loss(model, batch)
            first_b = len(self.outputs)
            loss_b, _ = self.objective.loss(model, batch)
            # The first output of each call: under adversarial training, its clean pass.
            out_a, out_b = self.outputs[0], self.outputs[first_b]
        finally:
            self.outputs = None
        keep = real_positions(batch[1], out_a.shape[1]) if self.tagger else None  # batch: ids, lengths, tags
        kl = symmetric_kl(out_a, out_b, keep)
        self.last_kl = kl.item()
        return (loss_a + loss_b) / 2 + self.alpha * kl, n_chars
