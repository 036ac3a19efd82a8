"""Task models: an encoder body with a task head on it, and freezing part of the body.

Freezing (``none``, ``embeddings``, ``bottom:N`` = the embeddings and the N lowest blocks, ``body``) turns off
gradients; the optimizer then holds only the trainable parameters, so frozen ones stay bit-identical. Task
checkpoints (body + head as files): `charformer.tasks.checkpoint`.
"""

from __future__ import annotations

import torch.nn as nn

from ..errors import CharformerError
from ..finetuning.cloze import build_cloze_model
from ..model import CharTransformer, ModelConfig
from .heads import Classifier, SequenceClassificationHead, Tagger, TokenTaggingHead

TASKS = ("cws", "ner", "classify")


def build_task_model(body_cfg: ModelConfig, task: dict) -> Tagger | Classifier:
    """A randomly initialised task model for the task description `task` (as stored in config.json)."""
    if "cloze" in task:  # classification through the masked-LM head (finetune.py --method cloze)
        return build_cloze_model(body_cfg, task)
    body = CharTransformer(body_cfg)
    if task["task"] == "classify":
        head = SequenceClassificationHead(body_cfg.d_model, task["labels"], pooling=task["pooling"],
                                          dropout=task["head_dropout"])
        return Classifier(body, head)
    head = TokenTaggingHead(body_cfg.d_model, task["tags"], task["scheme"], crf=task["crf"], dropout=task["head_dropout"])
    return Tagger(body, head, standards=task.get("standards", ()))


def head_modules(model: Tagger | Classifier) -> dict[str, nn.Module]:
    """The task model's modules outside the body, by attribute name: what an adapter stores whole (the head,
    and a multi-criteria segmenter's markers)."""
    markers = getattr(model, "markers", None)
    return {"head": model.head, **({"markers": markers} if markers is not None else {})}


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
