"""Where the Triton kernels run: a CUDA GPU, or the CPU interpreter (``TRITON_INTERPRET=1``).

Both kernel modules use the two helpers below, so the rules live in one place:

* ``autotune_configs``: autotuning benchmarks every config through the GPU driver, which the interpreter does
  not have, so off-GPU the autotuner gets exactly one config (with one config it never benchmarks). On a GPU the
  environment variable ``KERNELS_AUTOTUNE`` chooses: ``1`` (default) the kernel's short list of default configs,
  ``0`` only the last of them (small enough for every dtype and head dim: tests compile a fraction of the
  kernels), ``full`` the whole search space (minus what the kernel's pruning rejects; compiling it takes
  minutes).
* ``check_device``: a CPU tensor can only be handled by the interpreter; say so instead of failing deep inside
  Triton.
* ``_interpreter_scalar_fix``: Triton 3.6's interpreter holds every scalar as a 1-element numpy array and turns
  it into a loop bound with ``int(array)``, which numpy >= 2.4 refuses ("only 0-dimensional arrays can be
  converted to Python scalars"), so any ``range`` with a runtime bound fails there. Later Triton squeezes the
  array first; the fix below does the same for older ones, and only under the interpreter.
"""

from __future__ import annotations

import os

import torch
import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # read once, as the @triton.jit decorators do


def _interpreter_scalar_fix() -> None:
    """Make the interpreter's ``tensor.__index__`` accept 1-element arrays (a no-op where Triton already does)."""
    from triton.runtime import interpreter

    patch = interpreter._patch_lang_tensor  # sets tl.tensor's dunder methods while a kernel runs

    def patched(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched


if INTERPRET:
    _interpreter_scalar_fix()


def autotune_configs(defaults: list[triton.Config], interpreter: triton.Config,
                     space: list[triton.Config] | None = None) -> list[triton.Config]:
    """The configs to autotune over here: see the module docstring. Raises ValueError on a bad KERNELS_AUTOTUNE."""
    if INTERPRET or not torch.cuda.is_available():
        return [interpreter]
    choice = os.environ.get("KERNELS_AUTOTUNE", "1")
    if choice not in ("0", "1", "full"):
        raise ValueError(f"KERNELS_AUTOTUNE must be 0, 1 or full, got {choice!r}")
    return {"0": defaults[-1:], "1": defaults, "full": space or defaults}[choice]


def check_device(name: str, t: torch.Tensor) -> None:
    """Raise ValueError unless ``t`` can be handed to a kernel here (CUDA tensor, or any tensor when interpreting)."""
    if not (t.is_cuda or (INTERPRET and t.device.type == "cpu")):
        raise ValueError(
            f"{name} is on {t.device}: the Triton kernels need a CUDA tensor, or a CPU tensor with TRITON_INTERPRET=1 "
            "set before `kernels` is imported"
        )
