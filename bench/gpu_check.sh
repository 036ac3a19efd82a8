#!/usr/bin/env bash
# Kernel check for one GPU session (~8 minutes on an H100/H200, much of it Triton compilation). Writes to $OUT:
#   tests_bf16.txt/.xml  bf16 kernel tests: the only ones the CPU interpreter cannot run       (cap 90 s)
#   tests.txt/.xml       the other kernel tests on the GPU, except the slow random-mask test   (cap 170 s)
#                        (KERNELS_AUTOTUNE=0: one config per kernel, a third of the compilations)
#   bench.txt, attention.json, attention_*.png
#                        sweep T = 1K, 4K, 16K, 64K; D = 64, 128; bf16; causal and bidirectional; B = 16384 // T,
#                        H = 8 (so T = 65536 runs with B = 1, H = 8); naive and fused softmax only up to T = 4K;
#                        full autotuning                                                      (cap 200 s)
#   memory.txt           O(T) memory check: Triton at T = 65536, D = 64 must peak below 2 GB (its inputs,
#                        outputs and gradients take 0.54 GB; the (H, T, T) bf16 score matrix alone would take 69 GB)
# Usage:  OUT=/path/to/dir bash bench/gpu_check.sh          PYTHON=... selects the interpreter (default python)
# Exit status 0 only if every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu_check}
PY=${PYTHON:-python}
mkdir -p "$OUT"
status=0
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1

KERNELS_AUTOTUNE=0 timeout 90 "$PY" -m pytest tests/test_kernel_softmax.py tests/test_kernel_flash.py -k bf16 \
    -q -rs --durations=10 --junitxml="$OUT/tests_bf16.xml" 2>&1 | tee "$OUT/tests_bf16.txt" || status=1
KERNELS_AUTOTUNE=0 timeout 170 "$PY" -m pytest tests/test_kernel_softmax.py tests/test_kernel_flash.py \
    -k "not bf16 and not random_masks" -q -rs --durations=15 --junitxml="$OUT/tests.xml" 2>&1 \
    | tee "$OUT/tests.txt" || status=1

timeout 200 "$PY" -m bench.attention --T 1024 4096 16384 65536 --head-dims 64 128 --dtype bf16 \
    --masks causal bidirectional --tokens 16384 --heads 8 --naive-max-t 4096 --reps 5 --warmup 2 \
    --out "$OUT" 2>&1 | tee "$OUT/bench.txt" || status=1

"$PY" - "$OUT/attention.json" <<'EOF' 2>&1 | tee "$OUT/memory.txt" || status=1
import json, sys
records = json.load(open(sys.argv[1]))["records"]
runs = [r for r in records if r["impl"] == "triton" and r["T"] == 65536 and r["D"] == 64 and r["status"] == "ok"]
assert runs, "no Triton measurement at T = 65536, D = 64"
for r in runs:
    print(f"triton T=65536 B={r['B']} H={r['H']} D=64 {r['mask']}: peak {r['peak_mem_gb']:.2f} GB, "
          f"fwd+bwd {r['total_ms']:.1f} ms, {r['total_tflops']:.0f} TFLOP/s")
    assert r["peak_mem_gb"] < 2.0, "peak memory is not O(T)"
EOF
exit $status
