"""Compile every Triton kernel for real GPUs (sm80 Ampere, sm90 Hopper) on a machine without one.

    python -m kernels.compile_check            # prints one line per variant; exit status 1 on any failure

The CPU interpreter accepts code that the GPU compiler rejects (``break``, a loop variable changing type, too
small ``tl.dot`` shapes), and it has no shared-memory limit. This script runs the real compiler (Triton → PTX →
cubin with ``ptxas``) for each autotune config and checks the shared memory each one needs against the GPU's
limit: a config over the limit is skipped by the autotuner at run time, so every kernel needs at least one
config that fits.

It must run with ``TRITON_INTERPRET`` unset: under the interpreter ``@triton.jit`` returns interpreter objects
that cannot be compiled. ``tests/test_kernel_compile.py`` runs it in a subprocess.
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import triton
from triton.backends.compiler import GPUTarget

from . import flash_attention as fa
from . import softmax as sm

SHARED_MEMORY_LIMIT = {80: 166912, 90: 232448}  # max dynamic shared memory per block, bytes (A100, H100/H200)


@dataclass(frozen=True)
class Variant:
    kernel: str  # name of a kernel in `fa` or `sm`
    arch: int
    dtype: str  # fp16, bf16, fp32
    constexprs: tuple  # ((name, value), ...) including block sizes
    num_warps: int = 4
    num_stages: int = 2


def _signature(fn, dtype: str, constexprs: dict) -> dict:
    """Triton type of each argument, by the naming convention of the kernel files: pointers end in ``_ptr``."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("lse_ptr", "delta_ptr"):
            sig[name] = "*fp32"
        elif name == "lengths_ptr":
            sig[name] = "*i32"
        elif name.endswith("_ptr"):
            sig[name] = "*" + dtype
        elif name == "scale":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def compile_variant(variant: Variant) -> tuple[Variant, int | None, float, str]:
    """Compile one variant: returns (variant, shared memory bytes or None on failure, seconds, error)."""
    fn = getattr(fa, variant.kernel, None) or getattr(sm, variant.kernel)
    while not isinstance(fn, triton.runtime.JITFunction):  # an Autotuner wraps the JITFunction
        fn = fn.fn
    constexprs = dict(variant.constexprs)
    sig = _signature(fn, variant.dtype, constexprs)
    # the runtime marks 16-byte aligned pointers; do the same so the compiled code matches what a launch builds
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names) if sig[name].startswith("*")}
    start = time.perf_counter()
    try:
        src = triton.compiler.ASTSource(fn, signature=sig, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", variant.arch, 32),
                                  options={"num_warps": variant.num_warps, "num_stages": variant.num_stages})
        return variant, compiled.metadata.shared, time.perf_counter() - start, ""
    except Exception as e:  # report every failure, keep compiling the rest
        return variant, None, time.perf_counter() - start, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"


def _attention_variants() -> list[Variant]:
    flags = dict(CAUSAL=True, HAS_WINDOW=True, HAS_LENGTHS=True)  # every optional code path compiled in
    kernels = {"_attn_fwd_kernel": fa.FWD_CONFIGS, "_attn_bwd_dkdv_kernel": fa.DKDV_CONFIGS,
               "_attn_bwd_dq_kernel": fa.DQ_CONFIGS}
    out = []

    def add(name, arch, dtype, d, config, **extra):
        cx = dict(HEAD_DIM=d, BLOCK_D=d, **{**flags, **extra}, **config.kwargs)
        out.append(Variant(name, arch, dtype, tuple(cx.items()), config.num_warps, config.num_stages))

    for arch in (80, 90):
        for name, configs in kernels.items():
            for config in configs:  # all configs at D=128, where shared memory is tightest
                add(name, arch, "fp16", 128, config)
            add(name, arch, "fp16", 64, configs[0], CAUSAL=False, HAS_WINDOW=False, HAS_LENGTHS=False)
            if arch == 90:  # a launch turns integer arguments equal to 1 into constants: T = H = window = 1
                add(name, arch, "fp16", 64, configs[-1], Tq=1, Tk=1, H=1, window=1, tune_tq=1, tune_tk=1)
            if arch == 80 or name == "_attn_fwd_kernel":  # fp32 compiles slowly: sm80 (least shared memory)
                add(name, arch, "fp32", 128 if arch == 80 else 64, configs[-1])  # and the sm90 forward
        add("_attn_fwd_kernel", arch, "bf16", 128, fa.FWD_CONFIGS[0])
        for d in (64, 128):
            out.append(Variant("_attn_bwd_delta_kernel", arch, "fp16", (("HEAD_DIM", d), ("BLOCK_D", d),
                                                                        ("BLOCK_M", fa.DELTA_BLOCK_M))))
    return out


def _softmax_variants() -> list[Variant]:
    out = []
    for arch in (80, 90):
        for dtype in ("fp16", "fp32"):
            for one_block in (True, False):
                p = sm._launch_params(sm.MAX_BLOCK_N if one_block else 4 * sm.MAX_BLOCK_N)
                blocks = (("BLOCK_N", p["BLOCK_N"]), ("ONE_BLOCK", p["ONE_BLOCK"]))
                out.append(Variant("_softmax_fwd_kernel", arch, dtype, (("CAUSAL", True),) + blocks, p["num_warps"]))
                out.append(Variant("_softmax_bwd_kernel", arch, dtype, blocks, p["num_warps"]))
    return out


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("unset TRITON_INTERPRET: the interpreter replaces the kernels with objects that cannot be compiled")
        return 2
    variants = _attention_variants() + _softmax_variants()
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(compile_variant, variants))
    fitting = {}  # (kernel, arch, dtype, D) -> does any config fit in shared memory
    failures = 0
    for v, shared, seconds, error in results:
        cx = dict(v.constexprs)
        key = (v.kernel, v.arch, v.dtype, cx.get("HEAD_DIM"))
        fits = shared is not None and shared <= SHARED_MEMORY_LIMIT[v.arch]
        fitting[key] = fitting.get(key, False) or fits
        failures += bool(error)
        blocks = " ".join(f"{k}={cx[k]}" for k in ("BLOCK_M", "BLOCK_N", "HEAD_DIM", "ONE_BLOCK") if k in cx)
        status = error or f"shared {shared:>6} B {'fits' if fits else 'TOO BIG (autotuner skips it)'}"
        print(f"sm{v.arch} {v.dtype} {v.kernel:<22} {blocks:<38} w{v.num_warps} s{v.num_stages} "
              f"{seconds:5.1f}s  {status}")
    no_fit = [k for k, ok in fitting.items() if not ok]
    for k in no_fit:
        print(f"NO CONFIG FITS: {k}")
    print(f"{len(results)} variants, {failures} failed to compile, {len(no_fit)} without a fitting config, "
          f"{time.perf_counter() - start:.0f}s")
    return int(failures > 0 or bool(no_fit))


if __name__ == "__main__":
    sys.exit(main())
