"""Training throughput: characters per second and model FLOPs utilisation (MFU) of one training step.

For a few model shapes and attention implementations, time forward + backward + AdamW on random characters and
report chars/s and achieved TFLOP/s. FLOPs per character = 3 x `CharTransformer.flops_per_token` (forward, plus a
backward that costs twice the forward; PaLM's accounting, Chowdhery et al. 2022, appendix B). MFU divides the
achieved FLOP/s by the device's peak (`--peak-tflops`; on a known GPU it is looked up: H100/H200 989 dense bf16
TFLOP/s, A100 312), and is left empty when the peak is unknown (CPUs).

    python -m bench.train_throughput --quick                 # CPU: two small shapes, sdpa and naive
    python -m bench.train_throughput --out bench/results     # GPU: sizes up to 85M params, incl. triton
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from charformer.model import CharTransformer, ModelConfig

# name: (n_layers, n_heads, d_model, block_size, batch_size)
SHAPES = {
    "tiny-0.8M": (4, 4, 128, 64, 12),
    "small-11M": (6, 6, 384, 256, 16),
    "base-85M": (12, 12, 768, 1024, 8),
}
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_step(shape, impl: str, device, reps: int, warmup: int) -> dict:
    n_layers, n_heads, d_model, block, batch = shape
    cfg = ModelConfig(vocab_size=4096, block_size=block, n_layers=n_layers, n_heads=n_heads, d_model=d_model, attn_impl=impl)
    model = CharTransformer(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randint(7, cfg.vocab_size, (batch, block), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    times = []
    for i in range(warmup + reps):
        sync(device)
        t0 = time.perf_counter()
        with autocast:
            loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1).float(), x[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    chars = batch * (block - 1)
    flops = 3 * model.flops_per_token(block - 1) * chars
    return {"params": model.num_params(), "seconds_per_step": t, "chars_per_s": chars / t, "tflops": flops / t / 1e12}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU smoke run: small shapes, few repetitions")
    p.add_argument("--impls", nargs="+", default=None, help="attention implementations (default: by device)")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak, for MFU")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--out", default=None, help="folder for train_throughput.json")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = ["tiny-0.8M", "small-11M"] if args.quick or device.type == "cpu" else list(SHAPES)
    impls = args.impls or (["sdpa", "naive", "triton"] if device.type == "cuda" else ["sdpa", "naive"])
    reps = args.reps or (5 if args.quick else 20)
    peak = peak_tflops(device, args.peak_tflops)
    rows = []
    for name in shapes:
        for impl in impls:
            r = time_step(SHAPES[name], impl, device, reps=reps, warmup=2 if args.quick else 5)
            r.update(shape=name, impl=impl, mfu=(r["tflops"] / peak) if peak else None)
            rows.append(r)
            mfu = f", MFU {r['mfu']:.1%}" if r["mfu"] is not None else ""
            print(f"{name:>10} {impl:>13}: {r['chars_per_s']:>12,.0f} chars/s, {r['tflops']:.3f} TFLOP/s{mfu}")
    if args.out:
        meta = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
                "threads": torch.get_num_threads(), "peak_tflops": peak}
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "train_throughput.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
