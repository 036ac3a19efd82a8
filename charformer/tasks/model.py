"""Task models as files: building body + head, freezing part of the body, and task checkpoints.

A task checkpoint is an ordinary `charformer.checkpoint` directory whose weights are the whole task model
(``body.*`` and ``head.*`` tensors in model.safetensors) and whose config.json carries, under ``"task"``, all
that rebuilding the head needs: the task, its tag set and scheme or its label list, and the head options. So
`load_task_checkpoint` rebuilds it with no pickle and no code from the file.

Freezing (``none``, ``embeddings``, ``bottom:N`` = the embeddings and the N lowest blocks, ``body``) turns off
gradients; the optimizer then holds only the trainable parameters, so frozen ones stay bit-identical.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import load_weights, read_meta, save_checkpoint
from ..errors import CharformerError
from ..model import CharTransformer, ModelConfig
from ..vocab import CharVocab
from .heads import Classifier, SequenceClassificationHead, Tagger, TokenTaggingHead

TASKS = ("cws", "ner", "classify")


def build_task_model(body_cfg: ModelConfig, task: dict) -> Tagger | Classifier:
    """A randomly initialised task model for the task description `task` (as stored in config.json)."""
    body = CharTransformer(body_cfg)
    if task["task"] == "classify":
        head = SequenceClassificationHead(body_cfg.d_model, task["labels"], pooling=task["pooling"],
                                          dropout=task["head_dropout"])
        return Classifier(body, head)
    head = TokenTaggingHead(body_cfg.d_model, task["tags"], task["scheme"], crf=task["crf"], dropout=task["head_dropout"])
    return Tagger(body, head)


def pretrained_config(path: str | Path) -> tuple[ModelConfig, CharVocab]:
    """Model config and vocabulary of the pretrained checkpoint `path` (its weights: `load_weights` into the
    task model's ``body``). Raises CharformerError for a missing, broken or fine-tuned (task) checkpoint."""
    meta, cfg, vocab = read_meta(path)
    if "task" in meta:
        raise CharformerError(f"{path}: a fine-tuned task checkpoint; --init takes a pretrained one (pretrain.py --out)")
    return cfg, vocab


def freeze(model: Tagger | Classifier, spec: str) -> None:
    """Stop gradients to part of the body: ``none``, ``embeddings``, ``bottom:N`` or ``body``. Raises
    CharformerError for another spec or N beyond the number of layers."""
    body = model.body
    if spec == "none":
        return
    if spec == "body":
        frozen = [body]
    elif spec == "embeddings":
        frozen = [body.tok_emb]
    elif spec.startswith("bottom:") and spec[7:].isdigit() and int(spec[7:]) <= body.cfg.n_layers:
        frozen = [body.tok_emb, *body.blocks[: int(spec[7:])]]
    else:
        raise CharformerError(f"--freeze must be none, embeddings, bottom:N (N <= {body.cfg.n_layers} layers) or body, "
                              f"got {spec!r}")
    for module in frozen:
        module.requires_grad_(False)


def save_task_checkpoint(path: str | Path, model: Tagger | Classifier, vocab: CharVocab, task: dict, *,
                         trainer_state: dict | None = None, trainer_tensors: dict | None = None) -> Path:
    """Write body + head and the task description (see the module docstring)."""
    return save_checkpoint(path, model, model.body.cfg, vocab, extra={"task": task}, trainer_state=trainer_state,
                           trainer_tensors=trainer_tensors)


def load_task_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[Tagger | Classifier, CharVocab, dict]:
    """Rebuild a task model (in eval mode, on `device`). Returns (model, vocab, task). Raises CharformerError if
    `path` holds no task checkpoint."""
    meta, cfg, vocab = read_meta(path)
    task = meta.get("task")
    if not isinstance(task, dict) or task.get("task") not in TASKS:
        raise CharformerError(f"{path}: not a fine-tuned task checkpoint (config.json has no task description)")
    model = build_task_model(cfg, task)
    load_weights(model, path)
    return model.to(device).eval(), vocab, task
