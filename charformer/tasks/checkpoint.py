"""Task checkpoints: a fine-tuned task model (body + head) as files, and reading it back.

A task checkpoint is an ordinary `charformer.checkpoint` directory whose weights are the whole task model
(``body.*`` and ``head.*`` tensors in model.safetensors) and whose config.json carries, under ``"task"``, all
that rebuilding the head needs: the task, its tag set and scheme or its label list, and the head options. So
`load_task_checkpoint` rebuilds it with no pickle and no code from the file. A parameter-efficient fine-tune
(finetune.py --method lora, adapter, prefix, adalora, freeze) leaves an adapter instead
(`charformer.peft.common`: the method's tensors and the head, the task description in adapter.json, bound to
its base checkpoint by fingerprint); `load_task_checkpoint` accepts that too and puts it on its base.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import load_weights, read_meta, save_checkpoint
from ..errors import CharformerError
from ..model import ModelConfig
from ..peft import load_adapter, open_adapter
from ..vocab import CharVocab
from .heads import Classifier, Tagger
from .model import TASKS, build_task_model, head_modules


def pretrained_config(path: str | Path) -> tuple[ModelConfig, CharVocab]:
    """Model config and vocabulary of the pretrained checkpoint `path` (its weights: `load_weights` into the
    task model's ``body``). Raises CharformerError for a missing, broken or fine-tuned (task) checkpoint."""
    meta, cfg, vocab = read_meta(path)
    if "task" in meta:
        raise CharformerError(f"{path}: a fine-tuned task checkpoint; --init takes a pretrained one (pretrain.py --out)")
    return cfg, vocab


def save_task_checkpoint(path: str | Path, model: Tagger | Classifier, vocab: CharVocab, task: dict, *,
                         extra: dict | None = None, trainer_state: dict | None = None,
                         trainer_tensors: dict | None = None, weights: dict | None = None) -> Path:
    """Write body + head and the task description (see the module docstring); `extra`: more config.json fields;
    `weights`: see `charformer.checkpoint.save_checkpoint`."""
    return save_checkpoint(path, model, model.body.cfg, vocab, extra={"task": task, **(extra or {})},
                           trainer_state=trainer_state, trainer_tensors=trainer_tensors, weights=weights)


def _task_of(task, path) -> dict:
    if not isinstance(task, dict) or task.get("task") not in TASKS:
        raise CharformerError(f"{path}: not a fine-tuned task checkpoint or adapter (it has no task description)")
    return task


def load_task_checkpoint(path: str | Path, device: str | torch.device = "cpu", *,
                         base: str | Path | None = None) -> tuple[Tagger | Classifier, CharVocab, dict]:
    """Rebuild a task model (in eval mode, on `device`) from a task checkpoint, or from an adapter on its base
    checkpoint (`base`, else the one adapter.json records). Returns (model, vocab, task). Raises
    CharformerError if `path` holds neither, or the adapter does not fit the base."""
    found = open_adapter(path, base)
    if found is None:
        meta, cfg, vocab = read_meta(path)
        task = _task_of(meta.get("task"), path)
        model = build_task_model(cfg, task)
        load_weights(model, path)
        return model.to(device).eval(), vocab, task
    adapter, meta, base = found
    task = _task_of(meta.get("task"), adapter)
    cfg, vocab = pretrained_config(base)
    model = build_task_model(cfg, task)
    load_weights(model.body, base)
    load_adapter(adapter, model.body, modules=head_modules(model))
    return model.to(device).eval(), vocab, task
