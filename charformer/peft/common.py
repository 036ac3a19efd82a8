"""Choosing a fine-tuning method, counting what it trains, and saving/loading adapters against a fixed base.

An adapter directory holds only what fine-tuning changed, never a copy of the base model::

    adapter.safetensors   "model.<name>" tensors of the method (LoRA A/B, prefixes, ...; every body weight for
                          "full"), "<module>.<name>" tensors of extra modules such as the task head
    adapter.json          {"format": "charformer.adapter", "method", "options", "base": {"fingerprint", "model",
                           "path"}, "modules", ...extra}

The base fingerprint is ``sha256:`` over the architecture part of the config (JSON, sorted keys, without the
run-time choices `RUNTIME_FIELDS`) and then, in sorted name order, each base tensor's name, dtype, shape and
raw bytes. Hashing runs at several hundred MB/s, so a 10M-parameter fp32 base (40 MB) takes a fraction of a
second. Any change to the base (another checkpoint, further pretraining, a cast to bf16) changes it, and
`load_adapter` refuses such a base instead of silently producing wrong outputs.

One base, many adapters: `load_adapter` first takes out whatever method the model carries (`remove_method`
unmerges LoRA exactly and drops the extra modules), checks the fingerprint of what remains, then applies the
adapter's method and copies its tensors in. The base weights are never modified by lora, adalora, adapter or
prefix, so adapters can be swapped any number of times. A "full" adapter overwrites the body weights; after
loading one, the model is a different base and other adapters are refused.

Finding the base: adapter.json records the base checkpoint's absolute path (``base.path``); `open_adapter`
uses it unless given another (a base that has moved: the tools' ``--base DIR``). The fingerprint, not the
path, decides whether a base fits.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..checkpoint import atomic_dir, load_checkpoint, read_tagged_json
from ..errors import CharformerError
from ..model import CharTransformer, ModelConfig
from ..vocab import CharVocab
from .adalora import add_adalora
from .adapter import add_adapters
from .inject import AdaptedLinear, PeftModule, peft_prefixes, restore_linears
from .lora import add_lora
from .prefix import add_prefix, remove_prefix

METHODS = ("full", "freeze", "lora", "adapter", "prefix", "adalora")
_INJECT = {"lora": add_lora, "adapter": add_adapters, "prefix": add_prefix, "adalora": add_adalora}
RUNTIME_FIELDS = ("attn_impl", "dropout")  # config fields that change how, not what, the model computes
FORMAT = "charformer.adapter"


def apply_method(model: nn.Module, method: str, **options) -> dict:
    """Prepare the body `model` (a `CharTransformer`, modified in place) for fine-tuning with `method`.

    full: every body weight trains. freeze: the body is frozen (only a task head outside it trains), except
    the parameters whose names start with one of ``train=[...]`` (a language model's head is its output layer,
    tied to the input embedding: ``train=["tok_emb."]``). lora, adapter, prefix, adalora: the body is frozen and
    the method's modules are added (trainable); options are the keyword arguments of `add_lora`,
    `add_adapters`, `add_prefix`, `add_adalora`.
    Returns the options `load_adapter` needs to rebuild the method (defaults filled in, JSON-able).
    Raises CharformerError on an unknown method or option, or if a method is already applied.
    """
    if method not in METHODS:
        raise CharformerError(f"unknown fine-tuning method {method!r}; choose from {', '.join(METHODS)}")
    if peft_prefixes(model):
        raise CharformerError("the model already carries a fine-tuning method; call remove_method first")
    for p in model.parameters():
        p.requires_grad_(method == "full")
    if method == "full":
        if options:
            raise CharformerError(f"method 'full' takes no options, got {sorted(options)}")
        return {}
    if method == "freeze":
        if set(options) - {"train"}:
            raise CharformerError(f"method 'freeze' takes no options other than train, got {sorted(options)}")
        return _freeze_except(model, options.get("train", ()))
    inject = _INJECT[method]
    try:
        inspect.signature(inject).bind(model, **options)
    except TypeError as e:
        raise CharformerError(f"{method}: {e}") from None
    try:
        return inject(model, **options)
    except ValueError as e:
        raise CharformerError(f"{method}: {e}") from None


def _freeze_except(model: nn.Module, train) -> dict:
    prefixes = tuple(train)
    named = [p for name, p in model.named_parameters() if prefixes and name.startswith(prefixes)]
    if prefixes and not named:
        raise CharformerError(f"freeze: no parameter name starts with any of {list(prefixes)}")
    for p in named:
        p.requires_grad_(True)
    return {"train": list(prefixes)}


def remove_method(model: nn.Module) -> None:
    """Take every method's modules out of `model` (unmerging LoRA first): what remains is the base model,
    bit for bit (unless a "full" adapter was loaded). requires_grad flags are left as they are."""
    restore_linears(model)
    remove_prefix(model)


def trainable_parameters(*modules: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts over `modules` (e.g. body and head); shared tensors count once."""
    seen: dict[int, nn.Parameter] = {}
    for m in modules:
        for p in m.parameters():
            seen[id(p)] = p
    return sum(p.numel() for p in seen.values() if p.requires_grad), sum(p.numel() for p in seen.values())


def describe_trainable(*modules: nn.Module) -> str:
    """One line for logs: ``trainable 12,288 of 1,234,567 parameters (1.00%)``."""
    trainable, total = trainable_parameters(*modules)
    return f"trainable {trainable:,} of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"


def base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's tensors inside an adapted `model`: its state_dict without the methods' tensors, with
    merged LoRA weights replaced by their unmerged originals."""
    prefixes = peft_prefixes(model)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}
    for name, m in model.named_modules():
        if isinstance(m, AdaptedLinear) and m.merged:
            state[f"{name}.weight"] = m.unmerged_weight
    return state


def base_fingerprint(cfg: ModelConfig, weights: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """``"sha256:<hex>"`` of the architecture in `cfg` and the base tensors (a model, possibly adapted, or a
    state dict); see the module docstring."""
    state = base_state(weights) if isinstance(weights, nn.Module) else weights
    h = hashlib.sha256()
    arch = {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_FIELDS}
    h.update(json.dumps(arch, sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return "sha256:" + h.hexdigest()


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """What an adapter stores of the body: every method module's exported tensors plus any trainable base
    parameter ("full"), by state-dict name."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, PeftModule):
            out.update({f"{name}.{k}": v for k, v in m.export().items()})
    prefixes = peft_prefixes(model)
    for name, p in model.named_parameters():
        if p.requires_grad and not name.startswith(prefixes):
            out[name] = p.detach()
    return out


def save_adapter(
    path: str | Path,
    model: nn.Module,
    base_cfg: ModelConfig,
    base: str | nn.Module | Mapping[str, torch.Tensor],
    method: str,
    options: dict,
    *,
    modules: Mapping[str, nn.Module] | None = None,
    extra: dict | None = None,
    base_path: str | Path | None = None,
) -> Path:
    """Write an adapter directory atomically (layout in the module docstring).

    base: the base fingerprint, or what to compute it from (the base model or its state dict). Pass the
        fingerprint computed before training for "full" (and "freeze" with `train`), whose training changes
        the body's weights.
    method, options: as given to / returned by `apply_method`.
    modules: extra modules saved whole by name (e.g. ``{"head": head}``); "model" is reserved.
    extra: more JSON fields for adapter.json (training settings, task description).
    base_path: where the base checkpoint lives, recorded (absolute) so that `open_adapter` finds it.
    """
    modules = dict(modules or {})
    if "model" in modules:
        raise ValueError('"model" is reserved for the body\'s tensors; give the extra module another name')
    fingerprint = base if isinstance(base, str) else base_fingerprint(base_cfg, base)
    tensors = {f"model.{k}": v for k, v in adapter_tensors(model).items()}
    for mname, module in modules.items():
        tensors.update({f"{mname}.{k}": v.detach() for k, v in module.state_dict().items()})
    meta = {"format": FORMAT, "version": 1, "method": method, "options": options,
            "base": {"fingerprint": fingerprint, "model": base_cfg.to_dict(),
                     "path": None if base_path is None else str(Path(base_path).absolute())},
            "modules": sorted(modules),
            **(extra or {})}
    with atomic_dir(path) as tmp:
        save_file({k: v.to("cpu").contiguous() for k, v in tensors.items()}, str(tmp / "adapter.safetensors"))
        (tmp / "adapter.json").write_text(json.dumps(meta, indent=2) + "\n")
    return Path(path)


def read_adapter_meta(path: str | Path) -> dict:
    """adapter.json of adapter directory `path`. Raises CharformerError if it is not one."""
    path = Path(path)
    if not (path / "adapter.json").is_file() or not (path / "adapter.safetensors").is_file():
        raise CharformerError(f"{path}: no adapter here (expected adapter.json and adapter.safetensors)")
    return read_tagged_json(path / "adapter.json", FORMAT, "charformer adapter")


def find_adapter(path: str | Path) -> Path | None:
    """The adapter directory meant by `path`: the directory itself, its ``best/`` (a finetune.py output
    directory), or the ``.old`` copy a crash mid-rename leaves; None when there is none."""
    path = Path(path)
    for cand in (path, path / "best", path.with_name(path.name + ".old")):
        if (cand / "adapter.json").is_file():
            return cand
    return None


def open_adapter(path: str | Path, base: str | Path | None = None) -> tuple[Path, dict, Path] | None:
    """``(adapter directory, adapter.json, base checkpoint directory)`` if `path` holds an adapter (see
    `find_adapter`), else None. The base is `base` when given (a base that has moved), else the path recorded
    in adapter.json. Raises CharformerError when neither names one."""
    adapter = find_adapter(path)
    if adapter is None:
        return None
    meta = read_adapter_meta(adapter)
    base = base or meta["base"].get("path")
    if not base:
        raise CharformerError(f"{adapter}: the adapter records no base checkpoint; name it with --base DIR")
    return adapter, meta, Path(base)


def load_adapted_checkpoint(path: str | Path, device: str | torch.device = "cpu", *,
                            base: str | Path | None = None) -> tuple[CharTransformer, CharVocab, dict]:
    """A model from a checkpoint directory, or from an adapter directory put on its base checkpoint (see
    `open_adapter`). Returns ``(model, vocab, meta)`` like `load_checkpoint`, the model in eval mode on
    `device`; meta is adapter.json for an adapter."""
    found = open_adapter(path, base)
    if found is None:
        return load_checkpoint(path, device=device)
    adapter, meta, base = found
    model, vocab, _ = load_checkpoint(base, device=device)
    load_adapter(adapter, model)
    return model.eval(), vocab, meta


def load_adapter(path: str | Path, model: nn.Module, *, modules: Mapping[str, nn.Module] | None = None) -> dict:
    """Put the adapter in directory `path` on the base `model` (in place), replacing any method it carries.

    modules: extra modules to fill from the adapter, by the names they were saved under (e.g. the task head);
    extra modules saved but not asked for are ignored. Returns adapter.json's content.
    Raises CharformerError if the adapter was made for another base (fingerprint mismatch; the model is then
    left untouched) or if its tensors do not fit.
    """
    path = Path(path)
    meta = read_adapter_meta(path)
    fingerprint = base_fingerprint(model.cfg, model)
    if meta["base"]["fingerprint"] != fingerprint:
        raise CharformerError(
            f"{path}: adapter was made for another base model (its base is {meta['base']['fingerprint'][:23]}..., "
            f"this model is {fingerprint[:23]}...); load the base checkpoint it was fine-tuned from")
    try:
        tensors = load_file(str(path / "adapter.safetensors"))
    except (SafetensorError, OSError) as e:
        raise CharformerError(f"{path / 'adapter.safetensors'}: unreadable ({e})") from None
    remove_method(model)
    apply_method(model, meta["method"], **meta["options"])
    body = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    _copy_into(model, body, adapter_tensors(model), path)
    for mname, module in (modules or {}).items():
        sub = {k.removeprefix(f"{mname}."): v for k, v in tensors.items() if k.startswith(f"{mname}.")}
        _copy_into(module, sub, module.state_dict(), path, label=f"module {mname!r}")
    return meta


@torch.no_grad()
def _copy_into(module: nn.Module, saved: dict, expected: Mapping[str, torch.Tensor], path: Path,
               label: str = "model") -> None:
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise CharformerError(f"{path}: adapter does not fit the {label} (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    targets = module.state_dict(keep_vars=True)
    for name, value in saved.items():
        if value.shape != targets[name].shape:
            raise CharformerError(f"{path}: {name} has shape {tuple(value.shape)}, the {label} expects "
                                  f"{tuple(targets[name].shape)}")
        targets[name].copy_(value)
