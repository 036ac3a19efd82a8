"""Attention benchmark: naive PyTorch vs fused softmax vs Triton FlashAttention-2 vs PyTorch SDPA vs FlexAttention.

    python -m bench.attention                    # GPU sweep: T = 512 .. 65536, D = 64 and 128, bf16, both masks
    python -m bench.attention --quick            # CPU smoke test (< 1 min); Triton runs in the interpreter
    python -m bench.attention --help             # (or: charformer bench attention ...)

Implementations (all take q, k, v of shape (B, H, T, D) and return o):
    naive           kernels.reference.attention_reference: materialises the (T, T) scores, several passes
    fused_softmax   q kᵀ, then kernels.softmax.fused_softmax (one kernel for scale + mask + softmax), then @ v
    triton          kernels.flash_attention.flash_attention (FlashAttention-2, O(T) memory)
    sdpa:<BACKEND>  torch.nn.functional.scaled_dot_product_attention forced to one backend with
                    torch.nn.attention.sdpa_kernel; each of FLASH_ATTENTION, CUDNN_ATTENTION, EFFICIENT_ATTENTION
                    and MATH is tried, and a backend that rejects the inputs is reported as "unsupported"
    flex            torch.nn.attention.flex_attention with a block mask built once per shape (it skips the blocks
                    the mask leaves empty, as our kernel does); compiled with torch.compile on a GPU, eager on CPU
The O(T²)-memory ones (naive, fused_softmax, sdpa:MATH, and any windowed SDPA, which needs a (T, T) mask) are
skipped above --naive-max-t.

Timing: median over --reps repeats after --warmup, each repeat a forward then a backward (dO random); on GPU
with CUDA events and a synchronize per repeat, on CPU with time.perf_counter. Peak memory:
torch.cuda.max_memory_allocated over the repeats, inputs included (null on CPU). Each output is also compared
with the fp32 reference (max |error|) when T <= --naive-max-t.

Batch: B = max(1, --tokens // T) unless --batch is given, so every T processes about the same number of tokens.

Output (--out, default out/attention/; results kept on purpose are copied to bench/results/): attention.json (environment, the configs the autotuner chose, one record
per measurement; rewritten after every record, so a run cut short keeps what it measured; --append adds to the
records already there) and one PNG per sweep (dtype, D, mask, window).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
import warnings
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the Triton interpreter's small numpy matmuls run faster
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernel modules are imported
    torch.set_num_threads(1)  # tiny CPU ops: a 2-core machine ran the naive fwd+bwd at T=128 70x slower with 2

import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from kernels.flash_attention import autotune_choices, flash_attention  # noqa: E402
from kernels.reference import attention_reference, visible_keys  # noqa: E402
from kernels.softmax import fused_softmax  # noqa: E402

CUDA = torch.cuda.is_available()
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SDPA_BACKENDS = ["FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"]


# ---------------------------------------------------------------------------------------------------------------
# Implementations: f(q, k, v, causal, window) -> o, all (B, H, T, D)
# ---------------------------------------------------------------------------------------------------------------
def naive(q, k, v, causal, window):
    return attention_reference(q, k, v, causal=causal, window=window)[0]


def naive_fused_softmax(q, k, v, causal, window):
    scores = q @ k.transpose(-2, -1)  # (B, H, T, T)
    if window is not None:
        mask = visible_keys(q.shape[2], k.shape[2], causal=causal, window=window, device=q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
    return fused_softmax(scores, scale=q.shape[-1] ** -0.5, causal=causal) @ v


def triton_flash(q, k, v, causal, window):
    return flash_attention(q, k, v, causal=causal, window=window)


def sdpa(backend: str):
    def run(q, k, v, causal, window):
        with sdpa_kernel(getattr(SDPBackend, backend)):
            if window is None:
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # Tq == Tk: same diagonal
            mask = visible_keys(q.shape[2], k.shape[2], causal=causal, window=window, device=q.device)[0, 0]
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    return run


_FLEX = {}  # compiled flex_attention and block masks, built on first use (block masks per shape)


def flex(q, k, v, causal, window):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if "fn" not in _FLEX:
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False) if CUDA else flex_attention
    tq, tk = q.shape[2], k.shape[2]
    key = (tq, tk, causal, window, q.device)
    if key not in _FLEX:
        w, shift = window or tk, tk - tq  # the project's convention: queries aligned to the end of the keys

        def visible(b, h, q_idx, kv_idx):
            pos_q = q_idx + shift
            ok = pos_q - kv_idx < w
            return ok & (kv_idx <= pos_q) if causal else ok & (kv_idx - pos_q < w)

        _FLEX[key] = create_block_mask(visible, None, None, tq, tk, device=q.device)
    return _FLEX["fn"](q, k, v, block_mask=_FLEX[key])


def implementations(names: list[str]) -> dict:
    table = {"naive": naive, "fused_softmax": naive_fused_softmax, "triton": triton_flash, "flex": flex}
    out = {}
    for name in names:
        if name == "sdpa":
            out.update({f"sdpa:{b}": sdpa(b) for b in SDPA_BACKENDS})
        else:
            out[name] = table[name]
    return out


def quadratic_memory(impl: str, window: int | None) -> bool:
    """Does this implementation hold a (T, T) matrix?"""
    return impl in ("naive", "fused_softmax", "sdpa:MATH") or (impl.startswith("sdpa") and window is not None)


# ---------------------------------------------------------------------------------------------------------------
# FLOPs, timing
# ---------------------------------------------------------------------------------------------------------------
def visible_pairs(t: int, causal: bool, window: int | None) -> int:
    """Number of (query, key) pairs the mask leaves visible, Tq = Tk = t."""
    w = t if window is None else min(window, t)
    left = w * (w + 1) // 2 + (t - w) * w  # Σ_i min(i + 1, w): keys at or before each query, within the window
    return left if causal else 2 * left - t  # bidirectional: mirror image, the diagonal counted once


def attention_flops(b: int, h: int, t: int, d: int, causal: bool, window: int | None) -> tuple[float, float]:
    """(forward, backward) FLOPs: two matmuls (q kᵀ and P v) of 2·D FLOPs per visible pair forward, i.e.
    4·B·H·D·pairs; pairs = T² bidirectional, ≈ T²/2 causal, ≈ T·w windowed. Backward = 2.5x forward (q kᵀ is
    recomputed, plus dV, dP, dQ, dK). These are useful FLOPs: implementations that compute masked pairs anyway
    (naive, SDPA with a dense mask) get no credit for them."""
    fwd = 4.0 * b * h * d * visible_pairs(t, causal, window)
    return fwd, 2.5 * fwd


def _stamp():
    if CUDA:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event
    return time.perf_counter()


def _elapsed_ms(a, b) -> float:
    return a.elapsed_time(b) if CUDA else (b - a) * 1e3


def time_fwd_bwd(fn, q, k, v, do, reps: int, warmup: int) -> tuple[float, float, float]:
    """Median (forward, backward, forward + backward) milliseconds."""
    fwd, bwd, total = [], [], []
    for i in range(warmup + reps):
        q.grad = k.grad = v.grad = None
        t0 = _stamp()
        o = fn(q, k, v)
        t1 = _stamp()
        o.backward(do)
        t2 = _stamp()
        if CUDA:
            torch.cuda.synchronize()
        if i >= warmup:
            fwd.append(_elapsed_ms(t0, t1))
            bwd.append(_elapsed_ms(t1, t2))
            total.append(_elapsed_ms(t0, t2))
    return statistics.median(fwd), statistics.median(bwd), statistics.median(total)


def measure(impl: str, fn, b, h, t, d, dtype, causal, window, args, o_ref) -> dict:
    """One record: times, TFLOP/s, peak memory and error against the reference (or a status saying why not)."""
    record = dict(impl=impl, T=t, B=b, H=h, D=d, dtype=str(dtype).removeprefix("torch."),
                  mask="causal" if causal else "bidirectional", window=window, status="ok")
    if quadratic_memory(impl, window) and t > args.naive_max_t:
        return record | dict(status=f"skipped: O(T^2) memory above --naive-max-t {args.naive_max_t}")
    g = torch.Generator(device="cuda" if CUDA else "cpu").manual_seed(0)
    device = "cuda" if CUDA else "cpu"
    q, k, v, do = (torch.randn(b, h, t, d, generator=g, device=device, dtype=dtype) for _ in range(4))
    for x in (q, k, v):
        x.requires_grad_()
    run = lambda q, k, v: fn(q, k, v, causal, window)  # noqa: E731
    try:
        if CUDA:
            torch.cuda.reset_peak_memory_stats()
        if o_ref is not None:
            with torch.no_grad():
                record["max_abs_err"] = (run(q, k, v).float() - o_ref).abs().max().item()
        fwd_ms, bwd_ms, total_ms = time_fwd_bwd(run, q, k, v, do, args.reps, args.warmup)
    except torch.cuda.OutOfMemoryError:
        return record | dict(status="out of memory")
    except RuntimeError as e:  # e.g. an SDPA backend that does not take these inputs
        return record | dict(status="unsupported: " + str(e).splitlines()[0][:100])
    finally:
        del q, k, v, do
    fwd_flops, bwd_flops = attention_flops(b, h, t, d, causal, window)
    return record | dict(
        fwd_ms=fwd_ms, bwd_ms=bwd_ms, total_ms=total_ms,
        fwd_tflops=fwd_flops / fwd_ms / 1e9, bwd_tflops=bwd_flops / bwd_ms / 1e9,
        total_tflops=(fwd_flops + bwd_flops) / total_ms / 1e9,  # FLOP / ms / 1e9 = TFLOP/s
        peak_mem_gb=torch.cuda.max_memory_allocated() / 1e9 if CUDA else None)


def reference_output(b, h, t, d, dtype, causal, window) -> torch.Tensor:
    """fp32 reference output for the inputs `measure` builds (same generator seed)."""
    g = torch.Generator(device="cuda" if CUDA else "cpu").manual_seed(0)
    device = "cuda" if CUDA else "cpu"
    q, k, v = (torch.randn(b, h, t, d, generator=g, device=device, dtype=dtype).float() for _ in range(3))
    return attention_reference(q, k, v, causal=causal, window=window)[0]


# ---------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------
def environment() -> dict:
    env = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
               interpreter=os.environ.get("TRITON_INTERPRET") == "1",
               device=f"CPU {platform.machine()}, {os.cpu_count()} cores, Triton interpreter",
               cuda=torch.version.cuda, driver=None)
    if CUDA:
        env["device"] = torch.cuda.get_device_name()
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
    return env


def plot_sweep(records: list[dict], title: str, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # a bare GPU machine (bench/gpu_check.sh) may not have it; the JSON holds every figure
        print(f"matplotlib is not installed: no {path.name}")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_f) = plt.subplots(1, 2, figsize=(12, 4.5))
    for impl in dict.fromkeys(r["impl"] for r in records):
        pts = [r for r in records if r["impl"] == impl and r["status"] == "ok"]
        if pts:
            ts = [r["T"] for r in pts]
            ax_t.plot(ts, [r["total_ms"] for r in pts], "o-", label=impl)
            ax_f.plot(ts, [r["total_tflops"] for r in pts], "o-", label=impl)
    for ax, label in ((ax_t, "forward + backward, ms"), (ax_f, "forward + backward, TFLOP/s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    ax_t.set_yscale("log")
    ax_f.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--T", type=int, nargs="+", default=[2**i for i in range(9, 17)], help="sequence lengths")
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128], help="head dims D (default 64 128)")
    p.add_argument("--masks", nargs="+", default=["causal", "bidirectional"], choices=["causal", "bidirectional"])
    p.add_argument("--window", type=int, nargs="+", default=[None], help="sliding windows (keys), default none")
    p.add_argument("--dtype", default="bf16", choices=DTYPES, help="input dtype (default bf16; GPU only)")
    p.add_argument("--tokens", type=int, default=16384, help="B = max(1, tokens // T) (default 16384)")
    p.add_argument("--batch", type=int, default=None, help="fixed batch size instead of --tokens")
    p.add_argument("--heads", type=int, default=8, help="heads H (default 8)")
    p.add_argument("--impls", nargs="+", default=["naive", "fused_softmax", "triton", "sdpa"],
                   choices=["naive", "fused_softmax", "triton", "sdpa", "flex"])
    p.add_argument("--naive-max-t", type=int, default=4096, help="largest T for O(T^2)-memory implementations")
    p.add_argument("--reps", type=int, default=10, help="timed repeats, median reported (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed repeats first (default 3; autotuning happens here)")
    p.add_argument("--out", type=Path, default=Path("out/attention"), help="output directory (default out/attention)")
    p.add_argument("--append", action="store_true", help="add to the records of an existing attention.json in --out")
    p.add_argument("--quick", action="store_true",
                   help="CPU smoke test: T 64 and 128, B=1, H=2, D=32, fp32, 3 reps (overrides those options)")
    args = p.parse_args(argv)
    if args.quick:
        args.T, args.head_dims, args.dtype, args.batch, args.heads = [64, 128], [32], "fp32", 1, 2
        args.reps, args.warmup = 3, 1
    if not CUDA and args.dtype == "bf16":
        p.error("bf16 is computed wrongly by the Triton interpreter: use --dtype fp32 or fp16 on CPU")
    warnings.filterwarnings("ignore", message=".*(kernel not used|Memory efficient|Flash attention|cuDNN).*")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "attention.json"
    dtype = DTYPES[args.dtype]
    impls = implementations(args.impls)
    results = dict(environment=environment(), args={k: str(v) for k, v in vars(args).items()}, records=[])
    if args.append and path.exists():
        results["records"] = json.loads(path.read_text())["records"]
    for d in args.head_dims:
        for window in args.window:
            for mask in args.masks:
                sweep(results, d, mask == "causal", window, dtype, impls, args, path)
    print(f"wrote {path}; autotune choices: {json.dumps(results['autotune'], indent=1)}")


def sweep(results: dict, d: int, causal: bool, window: int | None, dtype, impls: dict, args, path: Path) -> None:
    """Measure every implementation at every T for one (D, mask, window); JSON after each record, then a PNG."""
    mask = "causal" if causal else "bidirectional"
    records = []
    for t in args.T:
        b = args.batch or max(1, args.tokens // t)
        o_ref = reference_output(b, args.heads, t, d, dtype, causal, window) if t <= args.naive_max_t else None
        for impl, fn in impls.items():
            r = measure(impl, fn, b, args.heads, t, d, dtype, causal, window, args, o_ref)
            records.append(r)
            results["records"].append(r)
            results["autotune"] = autotune_choices()
            path.write_text(json.dumps(results, indent=1))
            timing = (f"fwd {r['fwd_ms']:9.3f} ms  bwd {r['bwd_ms']:9.3f} ms  fwd {r['fwd_tflops']:6.1f} "
                      f"bwd {r['bwd_tflops']:6.1f} TFLOP/s  err {r.get('max_abs_err', float('nan')):.1e}"
                      if r["status"] == "ok" else r["status"])
            print(f"{args.dtype} D={d} {mask:<13} w={window} T={t:<6} B={b:<4} {impl:<26} {timing}", flush=True)
        del o_ref
    suffix = f"_w{window}" if window else ""
    title = f"{results['environment']['device']}: {args.dtype}, D={d}, H={args.heads}, {mask}{suffix}"
    plot_sweep(records, title, args.out / f"attention_{args.dtype}_d{d}_{mask}{suffix}.png")


if __name__ == "__main__":
    main()
