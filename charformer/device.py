"""Choosing the device a run or a prediction tool uses: light enough for every tool to import."""

from __future__ import annotations

import torch

from .errors import CharformerError


def pick_device(name: str) -> torch.device:
    """``"auto"`` -> cuda if available else cpu. Raises CharformerError for cuda on a machine without it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CharformerError("--device cuda requested but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise CharformerError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)
