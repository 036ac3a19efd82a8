"""``bench/gpu_check.sh --dry-run``: every step of the one-shot GPU script, run on the CPU under the Triton
interpreter at tiny sizes, so that a broken script is found in CI rather than in a GPU session. About a minute on
two cores (pytest workers, three benchmark processes)."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_gpu_check_dry_run_passes_and_leaves_at_most_8_files(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=900)
    summary = (out / "summary.txt").read_text() if (out / "summary.txt").exists() else ""
    assert result.returncode == 0, summary + result.stdout[-3000:] + result.stderr[-3000:]

    assert sorted(p.name for p in out.iterdir()) == [
        "attention.json", "bench.txt", "extra.tar.gz", "memory.txt", "summary.txt", "tests.txt"]
    for step in ("1 correctness", "2 headline", "3 windowed", "4 memory", "4 memory check"):
        assert f"{step}: exit 0" in summary
    assert "passed" in (out / "tests.txt").read_text()

    results = json.loads((out / "attention.json").read_text())
    triton_runs = {(r["T"], r["D"], r["mask"], r["window"]) for r in results["records"]
                   if r["impl"] == "triton" and r["status"] == "ok"}
    assert triton_runs >= {(64, 32, "causal", None), (128, 16, "bidirectional", None), (256, 32, "causal", 32),
                           (256, 16, "causal", None)}
    assert {r["impl"] for r in results["records"]} >= {"naive", "triton", "flex", "sdpa:MATH"}
    assert set(results["autotune"]) == {"_attn_fwd_kernel", "_attn_bwd_kernel"}
    with tarfile.open(out / "extra.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert "tests.xml" in names and "attention_fp32_d32_causal_w16.png" in names
