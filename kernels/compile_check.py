"""Compile every Triton kernel for real GPUs (sm80 Ampere, sm90 Hopper) on a machine without one, and report what
each compiled variant costs.

    python -m kernels.compile_check                       # one line per variant; exit status 1 on a failure
    python -m kernels.compile_check --report out.json     # also a JSON list, one record per variant
    python -m kernels.compile_check --full                # also every flag combination the benchmark runs and
                                                          # the whole autotune search space (slow: minutes)

The CPU interpreter accepts code that the GPU compiler rejects (``break``, a loop variable changing type, too
small ``tl.dot`` shapes, a mask changing shape in a branch), and it has no shared-memory or register limit. This
script runs the real compiler (Triton → PTX → cubin with ``ptxas``) for each config and reads off each cubin:

* ``n_regs``: registers per thread, and ``n_spills``: bytes of per-thread stack and local memory, where ``ptxas``
  puts the registers it could not fit (``cuobjdump -res-usage``: REG, STACK + LOCAL). A spill in a default
  config (one the benchmark autotunes over) of the attention kernels on sm90 is a failure.
* ``shared_bytes``: shared memory per program, checked against the GPU's limit (a config over it is skipped by
  the autotuner at run time, so every kernel needs at least one config that fits);
* ``wgmma``: whether the sm90 PTX uses Hopper's warpgroup MMA; the forward's default configs must.

It must run with ``TRITON_INTERPRET`` unset: under the interpreter ``@triton.jit`` returns interpreter objects
that cannot be compiled. ``tests/test_kernel_compile.py`` runs it in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget

from . import flash_attention as fa
from . import softmax as sm

SHARED_MEMORY_LIMIT = {80: 166912, 90: 232448}  # max dynamic shared memory per block, bytes (A100, H100/H200)
CHECKED_FOR_SPILLS = ("_attn_fwd_kernel", "_attn_bwd_kernel")  # on sm90, in their default configs


@dataclass(frozen=True)
class Variant:
    kernel: str  # name of a kernel in `fa` or `sm`
    arch: int
    dtype: str  # fp16, bf16, fp32
    constexprs: tuple  # ((name, value), ...) including block sizes
    num_warps: int = 4
    num_stages: int = 2
    default: bool = False  # a config the benchmark autotunes over (KERNELS_AUTOTUNE=1)


@dataclass
class Result:
    variant: Variant
    shared_bytes: int | None = None
    n_regs: int | None = None
    n_spills: int | None = None
    wgmma: bool = False
    seconds: float = 0.0
    error: str = ""
    flags: dict = field(default_factory=dict)

    def record(self) -> dict:
        """The JSON record: kernel, arch, config, default, n_regs, n_spills, shared_bytes, wgmma (+ details)."""
        v = self.variant
        cx = dict(v.constexprs)
        config = {k: cx[k] for k in ("BLOCK_M", "BLOCK_N", "ONE_BLOCK") if k in cx}
        config.update(num_warps=v.num_warps, num_stages=v.num_stages)
        return dict(kernel=v.kernel, arch=f"sm{v.arch}", config=config, default=v.default, n_regs=self.n_regs,
                    n_spills=self.n_spills, shared_bytes=self.shared_bytes, wgmma=self.wgmma, dtype=v.dtype,
                    constexprs={k: x for k, x in cx.items() if k not in config}, seconds=round(self.seconds, 1),
                    error=self.error)


def _signature(fn, dtype: str, constexprs: dict) -> dict:
    """Triton type of each argument, by the naming convention of the kernel files: pointers end in ``_ptr``."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("lse_ptr", "delta_ptr", "dq_ptr"):  # fp32 row statistics and the dQ accumulator
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


def _resource_usage(cubin: bytes, arch: int) -> tuple[int, int]:
    """(registers per thread, stack + local bytes per thread) of the cubin's kernel, from ``cuobjdump -res-usage``
    (shipped with Triton next to ``ptxas``)."""
    from triton.backends.nvidia.compiler import get_ptxas

    cuobjdump = Path(get_ptxas(arch).path).with_name("cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    usage = dict(re.findall(r"\b(REG|STACK|LOCAL):(\d+)", out.split("Function", 1)[1]))
    return int(usage["REG"]), int(usage["STACK"]) + int(usage["LOCAL"])


def compile_variant(variant: Variant) -> Result:
    """Compile one variant and read its resource usage; a failure is reported in ``Result.error``."""
    fn = getattr(fa, variant.kernel, None) or getattr(sm, variant.kernel)
    while not isinstance(fn, triton.runtime.JITFunction):  # an Autotuner wraps the JITFunction
        fn = fn.fn
    constexprs = dict(variant.constexprs)
    sig = _signature(fn, variant.dtype, constexprs)
    # the runtime marks 16-byte aligned pointers; do the same so the compiled code matches what a launch builds
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names) if sig[name].startswith("*")}
    start = time.perf_counter()
    result = Result(variant)
    try:
        src = triton.compiler.ASTSource(fn, signature=sig, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", variant.arch, 32),
                                  options={"num_warps": variant.num_warps, "num_stages": variant.num_stages})
        result.shared_bytes = compiled.metadata.shared
        result.n_regs, result.n_spills = _resource_usage(compiled.asm["cubin"], variant.arch)
        result.wgmma = "wgmma" in compiled.asm["ptx"]
    except Exception as e:  # report every failure, keep compiling the rest
        result.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    result.seconds = time.perf_counter() - start
    return result


# Flag combinations the benchmark runs (bench/attention.py and gpu_check.sh): causal or not, windowed or not.
BENCH_FLAGS = [dict(CAUSAL=c, HAS_WINDOW=w, HAS_LENGTHS=False) for c in (True, False) for w in (False, True)]
ALL_FLAGS = dict(CAUSAL=True, HAS_WINDOW=True, HAS_LENGTHS=True)  # every optional code path compiled in


def _space(space: list, defaults: list, fits) -> list:
    """The configs of ``space`` (not in ``defaults``) that the kernel's pruning keeps at D=128, bf16, on sm90."""
    return [c for c in space if c not in defaults and fits(c, 128, 2, SHARED_MEMORY_LIMIT[90])]


def _attention_variants(full: bool) -> list[Variant]:
    """Default run: on sm90 every default config at D=128 with every mask compiled in (the spill and wgmma bars),
    and the specialisations a launch can produce; on sm80 the first default and fp32. --full adds the rest of the
    defaults on sm80, the deterministic backward for every default, fp32 at D=128 on sm80, the benchmark's mask
    combinations at D=128 on sm90 (every default), and the pruned search space on sm90."""
    out = []

    def add(name, arch, dtype, d, config, default=False, **extra):
        cx = dict(HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)), **{**ALL_FLAGS, **extra}, **config.kwargs)
        out.append(Variant(name, arch, dtype, tuple(cx.items()), config.num_warps, config.num_stages, default))

    fwd, bwd = "_attn_fwd_kernel", "_attn_bwd_kernel"
    kernels = {fwd: (fa.FWD_DEFAULTS, {}), bwd: (fa.BWD_DEFAULTS, dict(ATOMIC_DQ=True))}
    plain = dict(CAUSAL=False, HAS_WINDOW=False, HAS_LENGTHS=False)
    for name, (defaults, mode) in kernels.items():
        for config in defaults:  # D=128, where registers and shared memory are tightest
            add(name, 90, "fp16", 128, config, default=True, **mode)
        add(name, 90, "fp16", 64, defaults[0], **mode, **plain)
        # a launch turns integer arguments equal to 1 into constants: T = H = window = 1
        add(name, 90, "fp16", 64, defaults[-1], **mode, Tq=1, Tk=1, H=1, window=1, tune_tq=1, tune_tk=1)
        add(name, 80, "fp16", 128, defaults[0], default=True, **mode)
        add(name, 80, "fp32", 64, defaults[-1], **mode)  # fp32 compiles slowly: D=64 here, D=128 with --full
    add(fwd, 90, "bf16", 128, fa.FWD_DEFAULTS[0], default=True)
    add(fwd, 90, "fp32", 64, fa.FWD_DEFAULTS[-1])
    add(bwd, 90, "fp16", 128, fa.BWD_DEFAULTS[0], ATOMIC_DQ=False)  # deterministic=True
    if full:
        for name, (defaults, mode) in kernels.items():
            for config in defaults[1:]:
                add(name, 80, "fp16", 128, config, default=True, **mode)
            add(name, 80, "fp32", 128, defaults[-1], **mode)
            for config in defaults:
                for flags in BENCH_FLAGS:
                    add(name, 90, "bf16", 128, config, default=True, **mode, **flags)
        for config in fa.BWD_DEFAULTS[1:]:
            add(bwd, 90, "fp16", 128, config, ATOMIC_DQ=False)
        for config in _space(fa.FWD_SPACE, fa.FWD_DEFAULTS, fa.fwd_fits):
            add(fwd, 90, "bf16", 128, config, CAUSAL=True, HAS_WINDOW=False, HAS_LENGTHS=False)
        for config in _space(fa.BWD_SPACE, fa.BWD_DEFAULTS, fa.bwd_fits):
            add(bwd, 90, "bf16", 128, config, ATOMIC_DQ=True, CAUSAL=True, HAS_WINDOW=False, HAS_LENGTHS=False)
    for arch in (80, 90):
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


def check(results: list[Result]) -> list[str]:
    """The bars, as a list of failures: compile errors, kernels with no config that fits in shared memory, spills
    in the attention kernels' default configs on sm90, and a default sm90 forward without wgmma."""
    problems = [f"compile error: {r.variant.kernel} sm{r.variant.arch}: {r.error}" for r in results if r.error]
    fitting = {}  # (kernel, arch, dtype, D) -> does any config fit in shared memory
    for r in results:
        v, cx = r.variant, dict(r.variant.constexprs)
        fits = r.shared_bytes is not None and r.shared_bytes <= SHARED_MEMORY_LIMIT[v.arch]
        key = (v.kernel, v.arch, v.dtype, cx.get("HEAD_DIM"))
        fitting[key] = fitting.get(key, False) or fits
        hopper_default = v.arch == 90 and v.default and v.kernel in CHECKED_FOR_SPILLS and not r.error
        if hopper_default and r.n_spills:
            problems.append(f"spills {r.n_spills} B: {r.record()}")
        if hopper_default and v.kernel == "_attn_fwd_kernel" and v.dtype != "fp32" and not r.wgmma:
            problems.append(f"no wgmma in the sm90 forward: {r.record()}")
    problems += [f"no config fits in shared memory: {k}" for k, ok in fitting.items() if not ok]
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", type=Path, help="write the JSON list of records here")
    p.add_argument("--full", action="store_true", help="also the benchmark's flag combinations and the whole "
                                                       "autotune search space")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("unset TRITON_INTERPRET: the interpreter replaces the kernels with objects that cannot be compiled")
        return 2
    variants = _attention_variants(args.full) + _softmax_variants()
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(compile_variant, variants))
    for r in results:
        v, rec = r.variant, r.record()
        blocks = " ".join(f"{k}={x}" for k, x in rec["config"].items() if k.isupper())
        flags = "".join(k[0] if k != "HAS_LENGTHS" else "L" for k in ("CAUSAL", "HAS_WINDOW", "HAS_LENGTHS")
                        if rec["constexprs"].get(k))
        status = r.error or (f"shared {r.shared_bytes:>6} B, {r.n_regs:3} regs, spills {r.n_spills:4} B"
                             f"{', wgmma' if r.wgmma else ''}")
        print(f"sm{v.arch} {v.dtype} {v.kernel:<22} D={rec['constexprs'].get('HEAD_DIM', '-'):<4} {flags:<3} "
              f"{blocks:<28} w{v.num_warps} s{v.num_stages} {'default' if v.default else '       '} "
              f"{r.seconds:5.1f}s  {status}")
    problems = check(results)
    for line in problems:
        print("FAIL", line)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps([r.record() for r in results], indent=1))
    print(f"{len(results)} variants, {len(problems)} problems, {time.perf_counter() - start:.0f}s")
    return int(bool(problems))


if __name__ == "__main__":
    sys.exit(main())
