"""Every Triton kernel compiles for sm80 and sm90, on any machine (see `kernels/compile_check.py`).

Runs in a subprocess with TRITON_INTERPRET unset: in this process conftest.py may have switched the interpreter
on, and then `@triton.jit` produced interpreter objects that cannot be compiled. It fails on a compile error, a
kernel with no config that fits in shared memory, a spill in a default config of the attention kernels on sm90,
or a default sm90 forward without wgmma; the report it writes is checked for the fields other tools read. Cold
it takes a few minutes on two cores, most of it the fp32 variants (Triton caches the compiled kernels in
~/.triton/cache, so reruns take seconds).
"""

import json
import os
import subprocess
import sys
from pathlib import Path


def test_kernels_compile_for_ampere_and_hopper(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, set to silence its warning
    report = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "kernels.compile_check", "--report", str(report)],
                            cwd=Path(__file__).parents[1], env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    records = json.loads(report.read_text())
    assert all(r.keys() >= {"kernel", "arch", "config", "default", "n_regs", "n_spills", "shared_bytes", "wgmma"}
               for r in records)
    hopper = [r for r in records if r["arch"] == "sm90" and r["default"]]
    assert {r["kernel"] for r in hopper} == {"_attn_fwd_kernel", "_attn_bwd_kernel"}
    assert all(r["n_spills"] == 0 and 0 < r["n_regs"] <= 255 for r in hopper)
    assert all(r["wgmma"] for r in hopper if r["kernel"] == "_attn_fwd_kernel")
