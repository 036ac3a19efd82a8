"""Where the Triton kernels run: a CUDA GPU, or the CPU interpreter (``TRITON_INTERPRET=1``).

Both kernel modules use the two helpers below, so the rules live in one place:

* ``autotune_configs``: autotuning benchmarks every config through the GPU driver, which the interpreter does
  not have, so off-GPU the autotuner gets exactly one config (with one config it never benchmarks). On a GPU,
  ``KERNELS_AUTOTUNE=0`` does the same with the last (smallest) GPU config, which fits every dtype and head dim:
  test runs compile a third as many kernels (``bench/gpu_check.sh`` uses it for the tests).
* ``check_device``: a CPU tensor can only be handled by the interpreter; say so instead of failing deep inside
  Triton.
"""

from __future__ import annotations

import os

import torch
import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # read once, as the @triton.jit decorators do


def autotune_configs(gpu: list[triton.Config], interpreter: triton.Config) -> list[triton.Config]:
    """The GPU configs on a CUDA machine (only the last with KERNELS_AUTOTUNE=0), else the interpreter config."""
    if INTERPRET or not torch.cuda.is_available():
        return [interpreter]
    return gpu[-1:] if os.environ.get("KERNELS_AUTOTUNE", "1") == "0" else gpu


def check_device(name: str, t: torch.Tensor) -> None:
    """Raise ValueError unless ``t`` can be handed to a kernel here (CUDA tensor, or any tensor when interpreting)."""
    if not (t.is_cuda or (INTERPRET and t.device.type == "cpu")):
        raise ValueError(
            f"{name} is on {t.device}: the Triton kernels need a CUDA tensor, or a CPU tensor with TRITON_INTERPRET=1 "
            "set before `kernels` is imported"
        )
