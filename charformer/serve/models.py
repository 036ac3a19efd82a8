"""The models a server holds and what each can do: loading one base checkpoint and its adapters, and the four
predictions (segment, tag, classify) on lists of texts, and the decoder that generation runs on.

This is the only module of `charformer.serve` that imports the project's loading and prediction code, so the
rest of the package depends on these few functions alone.

One base, many adapters: ``--ckpt`` is loaded once to learn what it is. A fine-tuned task checkpoint (or a
task adapter, put on the base its adapter.json names) serves its task; a causal pretrained checkpoint serves
generation; a bidirectional (masked-LM) pretrained checkpoint serves nothing by itself and is there for its
adapters. Each ``--adapter NAME=DIR`` is put on that base (`load_adapter` compares the base's fingerprint and
refuses another base, so a mismatch stops the server at start-up, not at the first request). Each adapter
gets its own model object, so requests for different adapters never swap methods in and out of a shared
model; but the weights are not copied per adapter: once every model is loaded and prepared,
`share_identical_tensors` makes all models point at one copy of each tensor that they hold with identical
contents (the base's embeddings, norms and unadapted or LoRA-wrapped projections), so memory grows by the
adapters' own tensors and heads only. Sharing is safe because inference only reads them. (A "full" adapter
has weights of its own, and int8 layers keep their packed weights apart: neither is shared.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import hashlib

import torch

from ..batch_decode import BatchDecoder, DecodeRequest
from ..checkpoint import read_meta
from ..errors import CharformerError
from ..heap import retain_freed_memory
from ..peft import find_adapter, load_adapted_checkpoint, read_adapter_meta
from ..quantize import inference_device, prepare_for_inference
from ..tasks.checkpoint import load_task_checkpoint
from ..tasks.predict import classify_texts, tag_texts
from ..tasks.schemes import spans_to_words, split_tag
from ..vocab import EOS_ID, CharVocab

TASK_OF_ENDPOINT = {"segment": "cws", "tag": "ner", "classify": "classify", "generate": "lm"}
ENDPOINT_OF_TASK = {task: endpoint for endpoint, task in TASK_OF_ENDPOINT.items()}
# Windows or texts per forward pass inside one gathered batch. A gathered batch mixes sentences of any length;
# `tag_texts` sorts the windows by length, so passes of 8 pad each to about its own length, where one pass of
# 64 would pad every sentence to the longest (bench/serve_load.py measures the server with this setting).
BATCH_WINDOWS = 8


@dataclass
class Served:
    """One servable model: `name` (None for the base), its task (cws, ner, classify or lm), the model ready
    for inference, its vocabulary and its task description (as stored in the checkpoint)."""

    name: str | None
    task: str
    model: torch.nn.Module
    vocab: CharVocab
    description: dict


def _kind_of(path: str | Path) -> str:
    """``task`` for a task checkpoint or adapter, ``lm`` for a causal checkpoint or LM adapter, ``encoder``
    for a bidirectional pretrained checkpoint. Raises CharformerError when `path` holds none of these."""
    adapter = find_adapter(path)
    if adapter is not None:
        task = read_adapter_meta(adapter).get("task", {})
        return "lm" if task.get("task") == "lm" else "task"
    meta, cfg, _ = read_meta(path)
    if "task" in meta:
        return "task"
    return "lm" if cfg.causal else "encoder"


def _load(path: str | Path, device: torch.device, int8: bool, base: str | Path | None, name: str | None) -> Served:
    kind = _kind_of(path)
    if kind == "encoder":
        raise CharformerError(f"{path}: a bidirectional (masked-LM) checkpoint serves nothing by itself; give it "
                              "adapters (--adapter NAME=DIR) or serve a fine-tuned or causal checkpoint")
    if kind == "lm":
        model, vocab, _ = load_adapted_checkpoint(path, device, base=base)
        if not model.cfg.causal:
            raise CharformerError(f"{path}: a bidirectional (masked-LM) model cannot generate text")
        description = {"task": "lm"}
    else:
        model, vocab, description = load_task_checkpoint(path, device, base=base)
        if description.get("standards"):  # the request format has no field to choose one (yet)
            raise CharformerError(f"{path}: a multi-criteria segmenter ({', '.join(description['standards'])}); the "
                                  "server cannot choose a standard: use python -m charformer.segment --standard NAME")
    return Served(name, description["task"], prepare_for_inference(model, int8=int8), vocab, description)


def load_served(ckpt: str | Path, adapters: dict[str, str | Path], *, device: str = "auto",
                int8: bool = False) -> tuple[Served | None, dict[str, Served]]:
    """The base of `ckpt` (None when it serves nothing by itself: a masked-LM base) and every adapter of
    `adapters` (name -> directory) put on it, all ready for inference. Raises CharformerError for a checkpoint
    that is not one, an adapter made for another base, or a base with nothing to serve."""
    dev = inference_device(device, int8)
    retain_freed_memory()
    if adapters and find_adapter(ckpt) is not None:
        raise CharformerError(f"{ckpt}: an adapter; with --adapter, --ckpt must be the base checkpoint they share")
    base = None if adapters and _kind_of(ckpt) == "encoder" else _load(ckpt, dev, int8, None, None)
    served = {name: _load(path, dev, int8, ckpt, name) for name, path in adapters.items()}
    share_identical_tensors([s.model for s in ([base] if base else []) + list(served.values())])
    return base, served


def share_identical_tensors(modules: list[torch.nn.Module]) -> int:
    """Make every parameter and buffer of `modules` with the same dtype, shape and bytes as one met earlier
    the very same tensor (in place; ties within a model are kept). Returns the bytes no longer held twice.
    For inference only: a shared tensor must not be trained or modified."""
    seen: dict[tuple, torch.Tensor] = {}
    counted: set[int] = set()
    saved = 0
    for module in (m for root in modules for m in root.modules()):
        for slots in (module._parameters, module._buffers):
            for key, tensor in slots.items():
                if tensor is None:
                    continue
                raw = tensor.detach().reshape(-1).view(torch.uint8).cpu().numpy()
                first = seen.setdefault((tensor.dtype, tuple(tensor.shape), str(tensor.device),
                                         hashlib.sha256(raw).digest()), tensor)
                if first is not tensor and torch.equal(first, tensor):
                    if id(tensor) not in counted:  # a tied tensor met twice is saved once
                        counted.add(id(tensor))
                        saved += tensor.numel() * tensor.element_size()
                    slots[key] = first
    return saved


def describe(served: Served) -> dict:
    """What `served` is, for clients: name (None for the base), task, endpoint, and the labels (classify) or
    entity types (ner) it predicts."""
    out = {"name": served.name, "task": served.task, "endpoint": f"/v1/{ENDPOINT_OF_TASK[served.task]}"}
    if served.task == "classify":
        out["labels"] = list(served.description["labels"])
    if served.task == "ner":
        out["types"] = sorted({split_tag(t)[1] for t in served.description["tags"]} - {""})
    return out


@torch.inference_mode()
def segment(served: Served, texts: list[str]) -> list[list[str]]:
    """Each text as its list of words (``"".join(words) == text``)."""
    spans = tag_texts(served.model, served.vocab, texts, batch_size=BATCH_WINDOWS,
                      overlap=served.description["overlap"])
    return [spans_to_words(text, s) for text, s in zip(texts, spans)]


@torch.inference_mode()
def tag(served: Served, texts: list[str]) -> list[list[dict]]:
    """Each text's entities as ``{"start", "end", "type", "text"}``, offsets in code points, end exclusive."""
    spans = tag_texts(served.model, served.vocab, texts, batch_size=BATCH_WINDOWS,
                      overlap=served.description["overlap"])
    return [[{"start": s, "end": e, "type": t, "text": text[s:e]} for s, e, t in found]
            for text, found in zip(texts, spans)]


@torch.inference_mode()
def classify(served: Served, texts: list[str]) -> list[dict]:
    """Each (non-empty) text's label and the probability of every label, ``{"label", "probs": {label: p}}``."""
    labels = served.model.head.labels
    probs = classify_texts(served.model, served.vocab, texts, batch_size=BATCH_WINDOWS)
    return [{"label": labels[int(row.argmax())], "probs": dict(zip(labels, row.tolist()))} for row in probs]


def new_decoder(served: Served, max_batch: int) -> BatchDecoder:
    """A continuous-batching decoder over an ``lm`` model, up to `max_batch` sequences per step."""
    return BatchDecoder(served.model, max_batch)


def decode_request(served: Served, g) -> DecodeRequest:
    """The decoder's request for `g` (a `limits.GenerateRequest`): its prompt as ids (characters outside the
    vocabulary read as [UNK]; an empty prompt starts at a line break), ending at the end-of-text token."""
    ids = served.vocab.encode(g.prompt) or served.vocab.encode("\n")
    return DecodeRequest(ids, g.max_new_chars, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p, seed=g.seed,
                         eos_id=EOS_ID)


def text_of(served: Served, new_id: int) -> str:
    """The text of one generated id ('' for a special token such as [UNK] or end-of-text)."""
    return served.vocab.decode([new_id])


@torch.inference_mode()
def warm_up(served: Served) -> None:
    """One small prediction, so that the first request does not pay for lazy initialisation."""
    if served.task == "lm":
        decoder = new_decoder(served, 1)
        decoder.add(DecodeRequest(served.vocab.encode("a"), 2, temperature=0.0))
        while decoder.busy:
            decoder.step()
    elif served.task == "classify":
        classify(served, ["a"])
    else:
        tag_texts(served.model, served.vocab, ["a"], batch_size=1, overlap=served.description["overlap"])
