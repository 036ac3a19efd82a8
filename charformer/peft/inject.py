"""How the fine-tuning methods attach to a `CharTransformer` without renaming its weights.

A method that changes a linear layer (LoRA, AdaLoRA, adapters) replaces it with an `AdaptedLinear` that holds
the *same* weight Parameter under the same name and one extra child, the method's `PeftModule`::

    blocks.0.attn.q_proj.weight          the base weight, untouched (still in the base checkpoint's name)
    blocks.0.attn.q_proj.lora.A, .B      the method's tensors, under the method's name

Keeping the base names means a base checkpoint loads into an adapted model, the base can be fingerprinted by
skipping every tensor under a `PeftModule`, and removing a method (`restore_linears`) gives back plain
``nn.Linear`` layers holding the original Parameters: one base in memory, many adapters in turn.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

# Target names accepted by the methods, and the model's layers they mean.
TARGETS = {
    "query": ("attn", "q_proj"),
    "key": ("attn", "k_proj"),
    "value": ("attn", "v_proj"),
    "output": ("attn", "o_proj"),
    "mlp_in": ("mlp", "fc_in"),
    "mlp_out": ("mlp", "fc_out"),
}
TARGET_GROUPS = {"mlp": ("mlp_in", "mlp_out"), "all": tuple(TARGETS)}


class PeftModule(nn.Module):
    """Base class of every module a method adds. Its parameters and buffers are the adapter's tensors."""

    def export(self) -> dict[str, torch.Tensor]:
        """The tensors an adapter file stores for this module (default: its state_dict)."""
        return {k: v.detach() for k, v in self.state_dict().items()}


class AdaptedLinear(nn.Module):
    """A bias-free or biased linear layer ``y = x Wᵀ (+ b)`` followed by a method's update ``update(x, y)``.

    Holds the original layer's weight/bias Parameters (not copies) and the update module under `kind`
    (``"lora"``, ``"adalora"`` or ``"adapter"``). x: ``(..., in_features)`` -> ``(..., out_features)``.

    `merge` folds a linear update (one with ``delta_weight()``) into the weight for inference; it keeps the
    unmerged weight aside so `unmerge` restores it bit for bit (subtracting the update back would leave rounding
    errors, and the base fingerprint that guards adapter loading compares exact bytes).
    """

    def __init__(self, linear: nn.Linear, kind: str, update: PeftModule):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.kind = kind
        self.add_module(kind, update)
        self.register_buffer("unmerged_weight", None, persistent=False)

    @property
    def update(self) -> PeftModule:
        return getattr(self, self.kind)

    @property
    def merged(self) -> bool:
        return self.unmerged_weight is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        return y if self.merged else self.update(x, y)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        if not hasattr(self.update, "delta_weight"):
            raise ValueError(f"a {self.kind} update is not linear and cannot be merged into the weight")
        self.unmerged_weight = self.weight.detach().clone()
        self.weight.add_(self.update.delta_weight().to(self.weight.dtype))

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight.copy_(self.unmerged_weight)
            self.unmerged_weight = None

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding this layer's (unmerged) base Parameters."""
        self.unmerge()
        # Built on the meta device: its own freshly initialised weight would be thrown away at once.
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight, linear.bias = self.weight, self.bias
        return linear


def resolve_targets(targets) -> list[str]:
    """Expand target names (``"query"``, ``"mlp"``, ``"all"``, or the layer names ``"q_proj"`` ...) into sorted
    canonical names of `TARGETS`. Raises ValueError on an unknown name."""
    if isinstance(targets, str):
        targets = targets.split(",")
    by_layer = {layer: name for name, (_, layer) in TARGETS.items()}
    out = set()
    for t in targets:
        t = t.strip()
        if t in TARGET_GROUPS:
            out.update(TARGET_GROUPS[t])
        elif t in TARGETS or t in by_layer:
            out.add(by_layer.get(t, t))
        else:
            raise ValueError(f"unknown target {t!r}: use {sorted(TARGETS) + sorted(TARGET_GROUPS)} or layer names")
    if not out:
        raise ValueError("no target layers given")
    return sorted(out, key=list(TARGETS).index)


def target_linears(model: nn.Module, targets: list[str]) -> Iterator[tuple[nn.Module, str, nn.Linear]]:
    """Yield ``(parent, attribute, linear)`` for each targeted layer of every block of `model`."""
    for block in model.blocks:
        for t in targets:
            sub, attr = TARGETS[t]
            parent = getattr(block, sub)
            yield parent, attr, getattr(parent, attr)


def wrap_linears(model: nn.Module, targets: list[str], kind: str, make_update) -> None:
    """Replace each targeted ``nn.Linear`` by an `AdaptedLinear` whose update is ``make_update(linear)``."""
    for parent, attr, linear in target_linears(model, targets):
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"{attr} is already adapted ({type(linear).__name__}); remove the method first")
        setattr(parent, attr, AdaptedLinear(linear, kind, make_update(linear)))


def restore_linears(model: nn.Module) -> None:
    """Replace every `AdaptedLinear` in `model` by the plain ``nn.Linear`` it wrapped (unmerging first)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, AdaptedLinear):
                setattr(module, name, child.to_linear())


def peft_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict name prefixes (``"blocks.0.attn.q_proj.lora."``) of every `PeftModule` in `model`."""
    return tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, PeftModule))
