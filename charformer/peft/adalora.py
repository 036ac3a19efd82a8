"""AdaLoRA: LoRA whose rank is spread over the layers where it helps most (Zhang et al. 2023, "Adaptive Budget
Allocation for Parameter-Efficient Fine-Tuning").

Each adapted layer learns its update in SVD form, so single rank-1 pieces can be switched off::

    y = W x + (alpha / r) · P diag(Λ) Q dropout(x)

    P: (out, r)  "left singular vectors",  orthonormal init; trained
    Λ: (r,)      "singular values",         zero init (so ΔW = 0 at step 0); trained, pruned to a budget
    Q: (r, in)   "right singular vectors",  orthonormal init; trained

The triplet (P[:, i], Λ[i], Q[i, :]) of every layer competes for a global budget of kept triplets:

* Importance. For each trained entry w, with g its gradient: sensitivity I = |w·g|,
  smoothed Ī ← β1·Ī + (1−β1)·I, uncertainty Ū ← β2·Ū + (1−β2)·|I − Ī|, score s(w) = Ī·Ū. A triplet's score is
  ``s(Λ[i]) + mean_j s(P[j, i]) + mean_j s(Q[i, j])``.
* Budget, in triplets over all layers: b(0) = r × layers until `init_warmup` steps, then a cubic decay
  ``b(t) = b_T + (b(0) − b_T)·(1 − (t − t_i)/(T − t_i − t_f))³`` to b_T = target_rank × layers, reached
  `final_warmup` steps before the end and kept to the end.
* Pruning: after each optimizer step, Λ entries outside the top-b scores are set to zero. A pruned triplet can
  come back while the budget is still moving (its Λ gets gradients again); in the final phase the mask is frozen.
* Orthogonality regulariser added to the loss, ``γ · Σ_layers (||PᵀP − I||²_F + ||QQᵀ − I||²_F)``, keeps P and Q
  close to orthonormal so Λ behaves like singular values (pruning one then removes a direction cleanly).

Deviation from the paper: P and Q start orthonormal (the paper starts them Gaussian and lets the regulariser
pull them there), so the regulariser is 0 at step 0.

Training-loop protocol (step = 0-based index of the optimizer step being taken)::

    loss = task_loss + controller.regularizer()      # each micro-batch
    loss.backward()
    optimizer.step()
    controller.update_and_mask(step)                 # reads .grad: after the step, before zero_grad
    optimizer.zero_grad()
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .inject import PeftModule, resolve_targets, wrap_linears


class SVDUpdate(PeftModule):
    """``forward(x, y) = y + (alpha/r) · P diag(Λ) Q dropout(x)``; x ``(..., in)``, y ``(..., out)``.

    `rank_mask` ``(r,)`` bool marks the triplets kept by the last pruning (saved with the adapter).
    """

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float, *, device=None,
                 dtype=None):
        super().__init__()
        if r < 1:
            raise ValueError(f"AdaLoRA rank must be >= 1, got {r}")
        self.scale = alpha / r
        kw = dict(device=device, dtype=dtype)
        self.P = nn.Parameter(nn.init.orthogonal_(torch.empty(out_features, r, **kw)))
        self.E = nn.Parameter(torch.zeros(r, **kw))
        self.Q = nn.Parameter(nn.init.orthogonal_(torch.empty(r, in_features, **kw)))
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("rank_mask", torch.ones(r, dtype=torch.bool, device=device))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y + self.scale * F.linear(F.linear(self.dropout(x), self.Q) * self.E, self.P)

    def delta_weight(self) -> torch.Tensor:
        """``(alpha/r) · P diag(Λ) Q``, shape ``(out_features, in_features)``."""
        return self.scale * ((self.P * self.E) @ self.Q)

    def orthogonality(self) -> torch.Tensor:
        """``||PᵀP − I||²_F + ||QQᵀ − I||²_F`` (scalar)."""
        eye = torch.eye(self.E.numel(), device=self.E.device, dtype=self.E.dtype)
        return (self.P.T @ self.P - eye).pow(2).sum() + (self.Q @ self.Q.T - eye).pow(2).sum()


def add_adalora(model: nn.Module, *, r: int = 12, alpha: float = 16.0, dropout: float = 0.0, targets="all") -> dict:
    """Wrap the `targets` layers of every block with an `SVDUpdate` of initial rank `r`. Returns the saved
    options. Training then needs an `AdaLoRAController`."""
    targets = resolve_targets(targets)

    def make(linear: nn.Linear) -> SVDUpdate:
        w = linear.weight
        return SVDUpdate(linear.in_features, linear.out_features, r, alpha, dropout, device=w.device, dtype=w.dtype)

    wrap_linears(model, targets, "adalora", make)
    return {"r": r, "alpha": alpha, "dropout": dropout, "targets": targets}


class AdaLoRAController:
    """Importance tracking, budget schedule and pruning for the `SVDUpdate` layers of `model`.

    target_rank: average kept rank per adapted layer at the end (the final budget is target_rank × layers).
    total_steps: optimizer steps of the run (T); init_warmup (t_i): steps at the full initial budget;
    final_warmup (t_f): last steps at the final budget, with the mask frozen. mask_interval: prune every this
    many steps while the budget decays. beta1, beta2: EMA factors of sensitivity and uncertainty.
    orth_reg: γ, the coefficient of `regularizer`.
    """

    def __init__(self, model: nn.Module, *, target_rank: int, total_steps: int, init_warmup: int, final_warmup: int,
                 mask_interval: int = 1, beta1: float = 0.85, beta2: float = 0.85, orth_reg: float = 0.1):
        self.layers = {name: m for name, m in model.named_modules() if isinstance(m, SVDUpdate)}
        if not self.layers:
            raise ValueError("the model has no AdaLoRA layers: apply the 'adalora' method first")
        self.initial_budget = sum(m.E.numel() for m in self.layers.values())
        self.target_budget = target_rank * len(self.layers)
        if not 0 < self.target_budget <= self.initial_budget:
            raise ValueError(f"target_rank {target_rank} must be between 1 and the initial rank")
        if init_warmup < 0 or final_warmup < 0 or init_warmup + final_warmup >= total_steps:
            raise ValueError(f"need init_warmup + final_warmup < total_steps, got {init_warmup} + {final_warmup} "
                             f">= {total_steps}")
        if mask_interval < 1:
            raise ValueError(f"mask_interval must be >= 1, got {mask_interval}")
        self.total_steps, self.init_warmup, self.final_warmup = total_steps, init_warmup, final_warmup
        self.mask_interval, self.beta1, self.beta2, self.orth_reg = mask_interval, beta1, beta2, orth_reg
        self.sensitivity: dict[str, torch.Tensor] = {}  # "layer.P" -> Ī, same shape as the parameter
        self.uncertainty: dict[str, torch.Tensor] = {}  # "layer.P" -> Ū
        self.mask_frozen = False

    def budget(self, step: int) -> int:
        """Triplets to keep, over all layers, after optimizer step `step` (the cubic schedule)."""
        t_i, t_end = self.init_warmup, self.total_steps - self.final_warmup
        if step < t_i:
            return self.initial_budget
        if step >= t_end:
            return self.target_budget
        left = 1 - (step - t_i) / (t_end - t_i)
        return int(self.target_budget + (self.initial_budget - self.target_budget) * left**3)

    def regularizer(self) -> torch.Tensor:
        """``orth_reg · Σ_layers (||PᵀP − I||²_F + ||QQᵀ − I||²_F)``: a scalar to add to the training loss."""
        return self.orth_reg * sum(m.orthogonality() for m in self.layers.values())

    def ranks(self) -> dict[str, int]:
        """Kept triplets per layer (module name -> count)."""
        return {name: int(m.rank_mask.sum()) for name, m in self.layers.items()}

    def total_rank(self) -> int:
        return sum(self.ranks().values())

    @torch.no_grad()
    def update_and_mask(self, step: int) -> int:
        """After optimizer step `step` (gradients still in .grad): update the importance scores, then zero the
        Λ entries outside the budget. Returns the number of kept triplets."""
        final = step >= self.total_steps - self.final_warmup
        if not final:
            self._update_importance()
        if step < self.init_warmup:
            return self.total_rank()
        if final and not self.mask_frozen:
            self._mask_to(self.target_budget)
            self.mask_frozen = True
        elif final:
            for m in self.layers.values():
                m.E.masked_fill_(~m.rank_mask, 0.0)  # the optimizer's momentum would revive pruned entries
        elif (step - self.init_warmup) % self.mask_interval == 0:
            self._mask_to(self.budget(step))
        return self.total_rank()

    def _update_importance(self) -> None:
        for name, m in self.layers.items():
            for pname in ("P", "E", "Q"):
                p, key = getattr(m, pname), f"{name}.{pname}"
                sens = (p * p.grad).abs() if p.grad is not None else torch.zeros_like(p)  # I; avg is Ī
                avg = self.sensitivity.get(key, torch.zeros_like(p))
                avg = self.beta1 * avg + (1 - self.beta1) * sens
                unc = self.uncertainty.get(key, torch.zeros_like(p))
                self.sensitivity[key] = avg
                self.uncertainty[key] = self.beta2 * unc + (1 - self.beta2) * (sens - avg).abs()

    def _scores(self, name: str) -> torch.Tensor:
        """Importance of each triplet of layer `name`, ``(r,)``; zeros before any importance update."""
        m = self.layers[name]
        s = {}
        for pname in ("P", "E", "Q"):
            key = f"{name}.{pname}"
            s[pname] = (self.sensitivity[key] * self.uncertainty[key] if key in self.sensitivity
                        else torch.zeros_like(getattr(m, pname)))
        return s["E"] + s["P"].mean(dim=0) + s["Q"].mean(dim=1)

    def _mask_to(self, budget: int) -> None:
        scores = torch.cat([self._scores(name) for name in self.layers])  # (total triplets,)
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[torch.topk(scores, budget).indices] = True
        sizes = [m.E.numel() for m in self.layers.values()]
        for m, layer_keep in zip(self.layers.values(), keep.split(sizes)):
            m.rank_mask.copy_(layer_keep)
            m.E.masked_fill_(~m.rank_mask, 0.0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Importance averages and the mask state as named tensors (for exact resumption)."""
        out = {f"sensitivity.{k}": v for k, v in self.sensitivity.items()}
        out.update({f"uncertainty.{k}": v for k, v in self.uncertainty.items()})
        out["mask_frozen"] = torch.tensor(self.mask_frozen)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.sensitivity = {k.removeprefix("sensitivity."): v for k, v in state.items() if k.startswith("sensitivity.")}
        self.uncertainty = {k.removeprefix("uncertainty."): v for k, v in state.items() if k.startswith("uncertainty.")}
        self.mask_frozen = bool(state["mask_frozen"])
