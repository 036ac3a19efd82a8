"""Checkpoints: a directory of safetensors and JSON, written atomically, loaded without pickle.

Layout of a checkpoint directory::

    model.safetensors          weights (tied tensors stored once)
    config.json                {"format": "charformer.checkpoint", "model": ModelConfig fields, ...extra}
    vocab.json                 the CharVocab the model was trained with
    trainer_state.json         step, RNG seeds, schedule... (only in checkpoints meant for resuming)
    trainer_state.safetensors  optimizer moments and RNG states as tensors

Writing goes to ``NAME.tmp-PID`` first; only a complete directory is renamed into place, and the previous
checkpoint is moved to ``NAME.old`` until then, so a crash at any moment leaves a complete checkpoint behind
(``NAME`` or, for the instant between the two renames, ``NAME.old``, which `resolve` falls back to). Loading
reads only safetensors and JSON: no ``torch.load`` of pickles, so a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from .errors import CharformerError
from .model import CharTransformer, ModelConfig
from .vocab import CharVocab

FORMAT = "charformer.checkpoint"


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success, fsync its files and rename it to `path` atomically."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f"{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(path: str | Path) -> Path:
    """Find the checkpoint directory meant by `path`: the directory itself, its ``best/`` (a training output
    directory), or the ``.old`` copy left by a crash mid-rename. Raises CharformerError if there is none."""
    path = Path(path)
    for cand in (path, path / "best", path.with_name(path.name + ".old")):
        if (cand / "config.json").is_file() and (cand / "model.safetensors").is_file():
            return cand
    raise CharformerError(f"{path}: no checkpoint here (expected config.json and model.safetensors)")


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    model_cfg: ModelConfig,
    vocab: CharVocab,
    *,
    extra: dict | None = None,
    trainer_state: dict | None = None,
    trainer_tensors: dict[str, torch.Tensor] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (see module docstring). `extra` is merged into config.json
    (e.g. the task head's description); `trainer_state` (JSON-able) and `trainer_tensors` hold what resuming
    needs. `weights`, if given, is `model`'s whole state dict, written instead of its own tensors (a model
    sharded by FSDP holds only slices; `charformer.distributed.full_weights`). Returns the path."""
    if len(vocab) != model_cfg.vocab_size:
        raise CharformerError(f"vocabulary has {len(vocab)} ids but the model expects vocab_size={model_cfg.vocab_size}")
    with atomic_dir(path) as tmp:
        if weights is None:
            save_model(model, str(tmp / "model.safetensors"))
        else:
            save_file(_untied(weights, model), str(tmp / "model.safetensors"))
        meta = {"format": FORMAT, "version": 1, "model": model_cfg.to_dict(), **(extra or {})}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        vocab.save(tmp / "vocab.json")
        if trainer_state is not None:
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2) + "\n")
            save_file({k: v.detach().cpu().contiguous() for k, v in (trainer_tensors or {}).items()},
                      str(tmp / "trainer_state.safetensors"))
    return Path(path)


def _untied(weights: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`weights` with each tied parameter (one tensor under several names, e.g. the embedding and the output
    layer) kept once, under the name `save_model` keeps (the first in sorted order), so that the file is the
    one `save_model` would write."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    aliases = {name for group in names.values() for name in sorted(group)[1:]}
    return {k: v.contiguous() for k, v in weights.items() if k not in aliases}


def read_tagged_json(file: Path, fmt: str, kind: str) -> dict:
    """Read a JSON file whose ``"format"`` field must equal `fmt`. Raises CharformerError naming `file` when it
    is not valid JSON or not a `kind`."""
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CharformerError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise CharformerError(f"{file}: not a {kind}")
    return meta


def read_meta(path: str | Path) -> tuple[dict, ModelConfig, CharVocab]:
    """Read config.json and vocab.json of a checkpoint; check they agree. Raises CharformerError."""
    path = resolve(path)
    meta = read_tagged_json(path / "config.json", FORMAT, "charformer checkpoint config")
    try:
        cfg = ModelConfig.from_dict(meta["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise CharformerError(f"{path / 'config.json'}: bad model config ({e})") from None
    vocab = CharVocab.load(path / "vocab.json")
    if len(vocab) != cfg.vocab_size:
        raise CharformerError(
            f"{path}: vocab.json has {len(vocab)} ids but config.json says vocab_size={cfg.vocab_size}: "
            "the vocabulary does not belong to this checkpoint"
        )
    return meta, cfg, vocab


def load_weights(module: torch.nn.Module, path: str | Path) -> None:
    """Load model.safetensors of checkpoint `path` into `module` (strict). Raises CharformerError when the
    tensors do not match the module (a config that does not match its weights)."""
    path = resolve(path)
    try:
        load_model(module, str(path / "model.safetensors"), strict=True)
    except (RuntimeError, SafetensorError) as e:
        raise CharformerError(f"{path}: weights do not match config.json ({str(e).strip()[:500]})") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[CharTransformer, CharVocab, dict]:
    """Rebuild a `CharTransformer` from a checkpoint directory. Returns ``(model, vocab, meta)``; the model is
    on `device` in eval mode."""
    meta, cfg, vocab = read_meta(path)
    model = CharTransformer(cfg)
    load_weights(model, path)
    return model.to(device).eval(), vocab, meta


def load_trainer_state(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read trainer_state.json and trainer_state.safetensors. Raises CharformerError if absent."""
    path = resolve(path)
    if not (path / "trainer_state.json").is_file():
        raise CharformerError(f"{path}: checkpoint has no trainer state to resume from")
    return json.loads((path / "trainer_state.json").read_text()), load_file(str(path / "trainer_state.safetensors"))
