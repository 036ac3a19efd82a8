#!/usr/bin/env bash
# Kernel check for one GPU session: correctness first, then the benchmark, in at most 8 minutes on an H100/H200
# (much of it Triton compilation), leaving at most 8 files in $OUT. Each step has its own time cap and every
# benchmark record is written as soon as it is measured, so a step cut short keeps what it did.
#
#   OUT=/path/to/dir bash bench/gpu_check.sh              # on a GPU machine
#   OUT=/path/to/dir bash bench/gpu_check.sh --dry-run    # the same steps on the CPU (Triton interpreter), tiny
#                                                         # sizes: tests/test_gpu_check_dry_run.py runs it in CI
# Needs python3 with torch, triton, numpy, pytest and pytest-xdist; nothing is installed (the repository root is
# put on PYTHONPATH). PYTHON=... selects the interpreter (default python3).
#
# Files in $OUT:
#   summary.txt     versions, GPU and driver; each step's exit status and seconds; the speed bars, met or not
#   tests.txt       1. kernels against the fp32 reference at the benchmark's sizes and configs (bf16, fp16;
#                      T 1000, 4133, Tq/Tk 1000/1200; D 64, 128; causal or not; key lengths + window), and the
#                      bf16 softmax tests; pytest -n
#   bench.txt       2. bf16, D = 128 first, then 64; T = 4096, 16384; causal and bidirectional; Triton, every SDPA
#                      backend that takes the inputs, naive at 4096 only
#                   3. sliding window 256 and 1024, causal, D = 128, T = 16384 and 65536: Triton, FlexAttention,
#                      SDPA with a dense mask (16384 only: the (T, T) mask)
#                   4. T = 65536, D = 64, B = 1, H = 8: Triton's peak memory
#   attention.json  all benchmark records, with the configs the autotuner chose
#   memory.txt      4. asserted: peak memory below 2 GB (the (H, T, T) bf16 scores alone would take 69 GB)
#   extra.tar.gz    PNGs per sweep, pytest's JUnit XML, nvidia-smi
# Exit status 0 only if every step passed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_check}
PY=${PYTHON:-python3}
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT/extra"
SUMMARY="$OUT/summary.txt"
status=0

step() {  # step NAME CAP_SECONDS LOG_FILE COMMAND...: run with a time cap, append its output to LOG_FILE
    local name=$1 cap=$(( $2 * CAP_SCALE )) log=$3 start rc
    shift 3
    start=$(date +%s)
    echo "== $name" >> "$log"
    timeout "$cap" "$@" >> "$log" 2>&1
    rc=$?
    echo "$name: exit $rc, $(( $(date +%s) - start )) s (cap $cap s)" | tee -a "$SUMMARY"
    [[ $rc == 0 ]] || status=1
}

if [[ $DRY == 1 ]]; then  # interpreter sizes: a few tiles per kernel
    CAP_SCALE=5  # the caps are the GPU's time budget; a shared CI machine may be several times slower
    WORKERS=2
    SELECT="sizes and lengths"  # half of the cases: the suite runs them all anyway
    HEADLINE=(--T 64 128 --head-dims 32 16 --dtype fp32 --batch 1 --heads 1 --naive-max-t 128)
    WINDOWED=(--T 128 256 --window 16 32 --head-dims 32 --dtype fp32 --batch 1 --heads 1 --naive-max-t 128)
    MEMORY=(--T 256 --head-dims 16 --dtype fp32 --batch 1 --heads 1)
    TIMING=(--reps 1 --warmup 0)
else
    CAP_SCALE=1
    WORKERS=8
    SELECT="sizes or bf16"  # the attention cases, and the bf16 softmax tests the interpreter cannot run
    HEADLINE=(--T 4096 16384 --head-dims 128 64 --dtype bf16 --tokens 16384 --heads 16 --naive-max-t 4096)
    WINDOWED=(--T 16384 65536 --window 256 1024 --head-dims 128 --dtype bf16 --batch 1 --heads 16
              --naive-max-t 16384)
    MEMORY=(--T 65536 --head-dims 64 --dtype bf16 --batch 1 --heads 8)
    TIMING=(--reps 5 --warmup 2)
fi

{
    echo "gpu_check $(date -u +%FT%TZ) dry_run=$DRY commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
    "$PY" -c "import torch, triton, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'triton', triton.__version__, 'numpy', numpy.__version__); \
print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU (Triton interpreter)')"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
} > "$SUMMARY" 2>&1
nvidia-smi > "$OUT/extra/nvidia-smi.txt" 2>&1

# (not tests/test_kernel_flash.py: it needs the hypothesis package, which a bare GPU machine may lack)
step "1 correctness" 150 "$OUT/tests.txt" "$PY" -m pytest -p no:cacheprovider -n "$WORKERS" -q -rs --durations=10 \
    --junitxml="$OUT/extra/tests.xml" tests/test_kernel_flash_sizes.py tests/test_kernel_softmax.py -k "$SELECT"

BENCH=("$PY" -m bench.attention --out "$OUT/extra" "${TIMING[@]}")
step "2 headline" 180 "$OUT/bench.txt" "${BENCH[@]}" "${HEADLINE[@]}" --masks causal bidirectional \
    --impls naive triton sdpa
step "3 windowed" 120 "$OUT/bench.txt" "${BENCH[@]}" "${WINDOWED[@]}" --masks causal --impls triton flex sdpa --append
step "4 memory" 60 "$OUT/bench.txt" "${BENCH[@]}" "${MEMORY[@]}" --masks causal --impls triton --append
mv "$OUT/extra/attention.json" "$OUT/attention.json" 2>/dev/null

step "4 memory check" 30 "$OUT/memory.txt" "$PY" - "$OUT/attention.json" "${MEMORY[1]}" <<'EOF'
import json, sys
records = json.load(open(sys.argv[1]))["records"]
t = int(sys.argv[2])
runs = [r for r in records if r["impl"] == "triton" and r["T"] == t and r["status"] == "ok"]
assert runs, f"no Triton measurement at T = {t}"
for r in runs:
    if r["peak_mem_gb"] is None:
        print(f"triton T={t}: ran on the CPU, peak memory not measured")
        continue
    print(f"triton T={t} B={r['B']} H={r['H']} D={r['D']} {r['mask']}: peak {r['peak_mem_gb']:.2f} GB, "
          f"fwd+bwd {r['total_ms']:.1f} ms")
    assert r["peak_mem_gb"] < 2.0, "peak memory is not O(T)"
EOF

"$PY" - "$OUT/attention.json" >> "$SUMMARY" 2>&1 <<'EOF'
import json, sys
results = json.load(open(sys.argv[1]))
ok = [r for r in results["records"] if r["status"] == "ok"]
print("autotune choices:", json.dumps(results.get("autotune"), indent=1))
print("bars (forward >= 1.0x, backward >= 0.9x of the fastest SDPA backend; windowed fwd+bwd >= 1.5x Flex):")
groups = {(r["T"], r["D"], r["mask"], r["window"]) for r in ok if r["impl"] == "triton"}
for t, d, mask, window in sorted(groups, key=lambda g: (g[3] or 0, g[1], g[2], g[0])):
    same = [r for r in ok if (r["T"], r["D"], r["mask"], r["window"]) == (t, d, mask, window)]
    ours = next(r for r in same if r["impl"] == "triton")
    rivals = [r for r in same if r["impl"].startswith("sdpa") and r["impl"] != "sdpa:MATH"]
    line = f"  T={t} D={d} {mask} window={window}:"
    if rivals:  # > 1: we are faster than the fastest SDPA backend
        fwd = min(r["fwd_ms"] for r in rivals) / ours["fwd_ms"]
        bwd = min(r["bwd_ms"] for r in rivals) / ours["bwd_ms"]
        line += f" fwd {fwd:.2f}x, bwd {bwd:.2f}x SDPA"
        if window is None:
            line += f" ({'met' if fwd >= 1.0 and bwd >= 0.9 else 'NOT met'})"
    flex = [r for r in same if r["impl"] == "flex"]
    if flex:
        total = flex[0]["total_ms"] / ours["total_ms"]
        line += f"; fwd+bwd {total:.2f}x FlexAttention ({'met' if total >= 1.5 else 'NOT met'})"
    print(line)
EOF

tar -czf "$OUT/extra.tar.gz" -C "$OUT" extra && rm -r "$OUT/extra"
n_files=$(find "$OUT" -mindepth 1 | wc -l)
echo "files in $OUT: $n_files (at most 8)" | tee -a "$SUMMARY"
[[ $n_files -le 8 ]] || status=1
echo "gpu_check exit status $status" | tee -a "$SUMMARY"
exit $status
