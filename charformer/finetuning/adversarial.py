"""Adversarial training on the character embeddings: FGM and PGD, as a wrapper around any fine-tuning objective.

    ids ─> tok_emb ─> e (B, T, C) ──────────────> body ─> loss L(e)          clean pass
                      e + r, ||r_b|| <= eps ─────> body ─> loss L(e + r)      adversarial pass
    trained on L(e) + L(e + r)

FGM, the fast gradient method on embeddings (Miyato, Dai & Goodfellow 2017, "Adversarial Training Methods for
Semi-Supervised Text Classification"): characters are discrete, so the perturbation goes on their embeddings,
along the gradient g = dL/de of the clean loss, normalised per sequence: ``r_b = eps * g_b / ||g_b||``. To first
order it raises each sequence's loss by ``eps * ||g_b||``, the most any perturbation of norm eps can.

PGD, projected gradient descent (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
Attacks"): K such steps of size alpha, each followed by a projection back onto the ball ``||r_b|| <= eps``;
Madry et al. take ``alpha = 2.5 eps / K``, the default here. One step of size eps is FGM.

Norms are over a whole row (a sequence, or a chunk of a long text): ``||r_b||`` is the L2 norm of its
``(T, C)`` perturbation. The perturbation is added by a forward hook on the embedding layer, so the wrapped
objective and model are unchanged; the hook acts only inside `Adversarial.loss`, never in evaluation. Cost per
step: K + 1 forward passes and K + 1 backward passes instead of one of each. The training loss that the loop
logs is the sum L(e) + L(e + r).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norm of each row of x ``(B, ...)``, shaped ``(B, 1, ..., 1)`` to broadcast against x."""
    return x.flatten(1).float().norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1)).to(x.dtype)


def pgd_step(delta: torch.Tensor, grad: torch.Tensor, *, alpha: float, eps: float) -> torch.Tensor:
    """One ascent step: ``delta + alpha * grad / ||grad||`` per row, then each row projected onto the ball of
    radius `eps` (rows already inside stay as they are). delta, grad ``(B, T, C)``."""
    delta = delta + alpha * grad / row_norms(grad)
    return delta * torch.clamp(eps / row_norms(delta), max=1.0)


class EmbeddingPerturbation:
    """A forward hook on an embedding module: adds `delta` ``(B, T, C)`` to its output when set, and when
    `capture` is on keeps the output (made a leaf that requires grad if the embedding is frozen, so the loss
    can still be differentiated with respect to it)."""

    def __init__(self, embedding: nn.Module):
        self.delta: torch.Tensor | None = None
        self.capture = False
        self.captured: torch.Tensor | None = None
        embedding.register_forward_hook(self._hook)

    def _hook(self, module, inputs, out):
        if self.delta is not None:
            return out + self.delta
        if self.capture:
            if not out.requires_grad:
                out = out.detach().requires_grad_()
            self.captured = out
            return out
        return None


class Adversarial:
    """`objective` trained on its clean loss plus its loss under an adversarial perturbation of the embeddings
    of `embedding` (the body's ``tok_emb``). steps=1 with alpha=eps is FGM; more steps is PGD. Everything but
    `loss` is the objective's own."""

    def __init__(self, objective, embedding: nn.Module, *, eps: float, steps: int = 1, alpha: float | None = None):
        if eps <= 0 or steps < 1:
            raise ValueError(f"adversarial training needs eps > 0 and steps >= 1, got eps={eps}, steps={steps}")
        self.objective, self.eps, self.steps = objective, eps, steps
        self.alpha = (eps if steps == 1 else 2.5 * eps / steps) if alpha is None else alpha
        self.noise = EmbeddingPerturbation(embedding)

    def __getattr__(self, name):  # metric, higher_is_better, batch, evaluate, report, ...
        return getattr(self.objective, name)

    def _loss_with(self, model, batch, delta: torch.Tensor) -> torch.Tensor:
        self.noise.delta = delta
        try:
            return self.objective.loss(model, batch)[0]
        finally:
            self.noise.delta = None

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        """Clean loss + adversarial loss (nats), and the objective's character count."""
        self.noise.capture = True
        try:
            clean, n_chars = self.objective.loss(model, batch)
        finally:
            self.noise.capture = False
        embedded, self.noise.captured = self.noise.captured, None
        (grad,) = torch.autograd.grad(clean, embedded, retain_graph=True)  # the clean graph is backpropagated later
        delta = pgd_step(torch.zeros_like(embedded), grad, alpha=self.alpha, eps=self.eps).detach()
        for _ in range(self.steps - 1):
            delta.requires_grad_()
            (grad,) = torch.autograd.grad(self._loss_with(model, batch, delta), delta)
            delta = pgd_step(delta.detach(), grad, alpha=self.alpha, eps=self.eps)
        return clean + self._loss_with(model, batch, delta), n_chars
