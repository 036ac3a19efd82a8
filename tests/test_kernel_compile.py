"""Every Triton kernel compiles for sm80 and sm90, on any machine (see `kernels/compile_check.py`).

Runs in a subprocess with TRITON_INTERPRET unset: in this process conftest.py may have switched the interpreter
on, and then `@triton.jit` produced interpreter objects that cannot be compiled. Cold, it takes ~40 s on two
cores (Triton caches the results in ~/.triton/cache, so reruns take a few seconds).
"""

import os
import subprocess
import sys
from pathlib import Path


def test_kernels_compile_for_ampere_and_hopper():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, set to silence its warning
    result = subprocess.run([sys.executable, "-m", "kernels.compile_check"], cwd=Path(__file__).parents[1], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
