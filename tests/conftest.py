"""Shared pytest setup. Kernel part: run Triton kernels in the CPU interpreter when there is no GPU.

The interpreter is switched on by TRITON_INTERPRET=1, read when `@triton.jit` decorates a kernel, so it must be
set here, before any test module imports `kernels.softmax` or `kernels.flash_attention`.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small numpy matmuls in the interpreter: threads only slow them

import pytest  # noqa: E402
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> torch.device:
    """Where kernel tests put their tensors: the GPU if there is one, else the CPU (interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
