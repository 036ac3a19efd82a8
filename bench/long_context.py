"""Long character text made cheap: hourglass vs plain, windowed attention, memory and time per character vs T.

    python -m bench.long_context throughput   # training chars/s, plain vs hourglass (Tiny Shakespeare CPU shape)
    python -m bench.long_context budget       # pretrain.py runs on the same wall-clock budget: val bits/char
    python -m bench.long_context memory       # pretrain.py --window 256 --attn-impl local at T = 1K, 4K, 16K: peak RSS
    python -m bench.long_context scaling      # memory and time per character vs T, every attention kind (PNG)

Each writes ``OUT/long_context_<mode>.json`` (OUT = ``out/`` unless ``--out``) with the command that made it.

* throughput: one training step (forward, backward, AdamW) on random characters at the shape of
  ``configs/shakespeare_char_cpu.toml``, for the plain model and hourglass splits of the same depth and width.
  The machine is shared, so the variants run in turn, ``--steps`` steps each, for ``--rounds`` rounds; each
  round's chars/s is divided by the plain model's in the same round, and the median of those ratios is reported.
* budget: ``pretrain.py --config configs/shakespeare_char_cpu.toml`` for each variant, the plain model for
  ``--seconds`` worth of steps at its measured step time, each hourglass for as many more steps as its measured
  speed-up allows (the same wall-clock budget at the throughput measured by ``throughput``); reports the final
  validation bits/char over the whole validation text and the seconds the runs actually took.
* memory: a separate process per T runs ``pretrain.py`` for a few steps (``--batch-size 1``) and reports its peak
  resident set size (``ru_maxrss``); the bar is RSS(16,384) <= 1.5 x 4 x RSS(4,096).
* scaling: a separate process per (attention kind, T) builds the model and times one training step (FlexAttention
  on the CPU: one forward pass, it has no CPU backward) and reports seconds and peak RSS per character.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

from charformer.cli import load_toml
from charformer.model import CharTransformer, ModelConfig

CPU_CONFIG = "configs/shakespeare_char_cpu.toml"  # paths relative to the repository root, where commands run
# Hourglass variants of the 4-layer CPU shape: [pre, mid, post] layers, shortening factor K.
HOURGLASS = {
    "plain": {},
    "K2 [1,2,1]": dict(shorten=2, shorten_layers=[1, 2, 1]),
    "K3 [1,2,1]": dict(shorten=3, shorten_layers=[1, 2, 1]),
    "K2 [1,3,0]": dict(shorten=2, shorten_layers=[1, 3, 0]),
    "K3 [1,3,0]": dict(shorten=3, shorten_layers=[1, 3, 0]),
}
# Attention kinds of the scaling plot: (model overrides, whether the step trains).
KINDS = {
    "plain (sdpa, full causal)": (dict(attn_impl="sdpa"), True),
    "sdpa + window (dense mask)": (dict(attn_impl="sdpa", window=256), True),
    "local window": (dict(attn_impl="local", window=256), True),
    "flex window (forward only)": (dict(attn_impl="flex", window=256), False),
    "hourglass K2 [1,2,1] + local window": (dict(attn_impl="local", window=256, shorten=2, shorten_layers=[1, 2, 1]), True),
}


def cpu_shape() -> dict:
    """The model and batch of configs/shakespeare_char_cpu.toml."""
    cfg = load_toml(ROOT / CPU_CONFIG)
    return {k: cfg[k] for k in ("n_layers", "n_heads", "d_model", "block_size", "norm", "batch_size")}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train_step(model, opt, x) -> None:
    loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def throughput(args) -> dict:
    shape = cpu_shape()
    batch = shape.pop("batch_size")
    models = {}
    for name, over in HOURGLASS.items():
        torch.manual_seed(0)
        model = CharTransformer(ModelConfig(vocab_size=65, **shape, **over))
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    x = torch.randint(7, 65, (batch, shape["block_size"] + 1))
    chars = batch * shape["block_size"]
    for model, opt in models.values():  # warm-up
        for _ in range(3):
            train_step(model, opt, x)
    rounds = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, (model, opt) in models.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                train_step(model, opt, x)
            rounds[name].append(chars * args.steps / (time.perf_counter() - t0))
    rows = {}
    for name, cps in rounds.items():
        ratios = [a / b for a, b in zip(cps, rounds["plain"])]
        rows[name] = {"chars_per_s_median": statistics.median(cps), "ratio_to_plain_median": statistics.median(ratios),
                      "chars_per_s": cps, "ratio_to_plain": ratios, "overrides": HOURGLASS[name]}
        print(f"{name:>12}: {statistics.median(cps):>9,.0f} chars/s, {statistics.median(ratios):.2f}x plain "
              f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    return {"shape": shape, "batch_size": batch, "steps_per_round": args.steps, "rounds": args.rounds, "rows": rows}


def flags(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += ["--" + k.replace("_", "-"), *map(str, v if isinstance(v, list) else [v])]
    return out


def budget(args, out: Path) -> dict:
    measured = json.loads((out / "long_context_throughput.json").read_text())["rows"]
    plain_steps_per_s = measured["plain"]["chars_per_s_median"] / (cpu_shape()["batch_size"] * cpu_shape()["block_size"])
    base_steps = int(args.seconds * plain_steps_per_s)
    rows = {}
    for name in args.variants:
        steps = int(base_steps * measured[name]["ratio_to_plain_median"])
        slug = "".join("-" if c in " ," else c for c in name if c not in "[]")  # "K3 [1,2,1]" -> "K3-1-2-1"
        run = Path(os.path.relpath(out, ROOT)) / "long_context_budget" / slug
        cmd = [sys.executable, "pretrain.py", "--config", CPU_CONFIG, "--out", str(run), "--overwrite",
               "--max-steps", str(steps), "--eval-interval", str(max(steps // 4, 1)), *flags(HOURGLASS[name])]
        print("$", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        res = json.loads((ROOT / run / "results.json").read_text())
        rows[name] = {k: res[k] for k in ("val_loss", "val_bpc", "steps", "chars_seen", "train_seconds", "wall_seconds")}
        rows[name]["command"] = "python " + shlex.join(cmd[1:])
        print(f"{name:>12}: {steps} steps, val {res['val_bpc']:.4f} bits/char, {res['train_seconds']:.0f} s training")
    return {"seconds": args.seconds, "plain_steps_per_s": plain_steps_per_s, "rows": rows}


def run_child(argv: list[str]) -> dict:
    """Run this script's hidden ``_child`` mode in a fresh process (so peak RSS is its own); returns its JSON."""
    cmd = [sys.executable, "-m", "bench.long_context", "_child", *argv]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(argv: list[str]) -> None:
    """``_child pretrain ARGS...``: run pretrain.py in this process; ``_child probe JSON``: time one step."""
    if argv[0] == "pretrain":
        import pretrain

        t0 = time.perf_counter()
        with open(os.devnull, "w") as devnull:
            stdout, sys.stdout = sys.stdout, devnull
            pretrain.main(argv[1:])
            sys.stdout = stdout
        print(json.dumps({"peak_rss_mib": peak_rss_mib(), "seconds": time.perf_counter() - t0}))
        return
    spec = json.loads(argv[1])
    torch.manual_seed(0)
    shape = cpu_shape()
    shape.pop("batch_size")
    shape["block_size"] = spec["T"]
    model = CharTransformer(ModelConfig(vocab_size=65, **shape, **spec["overrides"]))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(7, 65, (1, spec["T"] + 1))
    base = peak_rss_mib()
    times = []
    for _ in range(2):  # the first step also allocates the optimizer state (and compiles FlexAttention)
        t0 = time.perf_counter()
        if spec["train"]:
            train_step(model, opt, x)
        else:
            with torch.no_grad():
                model(x[:, :-1])
        times.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": times[-1], "peak_rss_mib": peak_rss_mib(), "rss_before_step_mib": base}))


def memory(args, out: Path) -> dict:
    rows = {}
    data = [os.path.relpath(p, ROOT) for p in args.data]
    for t in args.lengths:
        run = Path(os.path.relpath(out, ROOT)) / "long_context_memory" / str(t)
        argv = ["pretrain", "--config", CPU_CONFIG, "--data", *data, "--out", str(run),
                "--overwrite", "--block-size", str(t), "--window", str(args.window), "--attn-impl", "local",
                "--batch-size", "1", "--max-steps", str(args.steps), "--eval-interval", str(args.steps),
                "--eval-batches", "1", "--sample-chars", "20", "--warmup-steps", "1"]
        rows[str(t)] = {**run_child(argv), "command": "python pretrain.py " + shlex.join(argv[1:])}
        print(f"T={t:>6}: {rows[str(t)]}", flush=True)
    result = {"window": args.window, "steps": args.steps, "rows": rows}
    if "4096" in rows and "16384" in rows and "peak_rss_mib" in rows["16384"]:
        ratio = rows["16384"]["peak_rss_mib"] / rows["4096"]["peak_rss_mib"]
        result["rss_16k_over_4k"] = ratio
        result["bar_met"] = ratio <= 1.5 * 4
        print(f"RSS(16,384) / RSS(4,096) = {ratio:.2f} (bar: <= 6.0)")
    return result


def scaling(args, out: Path) -> dict:
    rows = []
    for t in args.lengths:
        for kind, (over, train) in KINDS.items():
            if t > args.dense_max and "window" not in over:
                continue
            if t > args.dense_max and kind.startswith("sdpa + window"):
                continue  # the dense (T, T) mask: skipped past --dense-max
            r = run_child(["probe", json.dumps({"T": t, "overrides": over, "train": train})])
            rows.append({"kind": kind, "T": t, **r})
            print(f"T={t:>6} {kind:>38}: {r}", flush=True)
    plot(rows, out / "long_context_scaling.png")
    return {"rows": rows, "png": "long_context_scaling.png"}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind in KINDS:
        pts = [r for r in rows if r["kind"] == kind and "seconds" in r]
        if not pts:
            continue
        ts = [r["T"] for r in pts]
        ax_t.plot(ts, [1e6 * r["seconds"] / r["T"] for r in pts], "o-", label=kind)
        ax_m.plot(ts, [1024 * (r["peak_rss_mib"] - r["rss_before_step_mib"]) / r["T"] for r in pts], "o-", label=kind)
    for ax, title in ((ax_t, "time per character (µs), one step, batch 1"),
                      (ax_m, "peak memory added by the step per character (KiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T (characters)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    ax_t.legend(fontsize=7)
    fig.suptitle("4 layers x d_model 128, window 256, CPU, 1 thread (training step; flex: forward only)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        return child(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("throughput", "budget", "memory", "scaling"))
    p.add_argument("--out", type=Path, default=ROOT / "out", help="folder for the results (default: out/)")
    p.add_argument("--steps", type=int, default=None, help="throughput: steps per round (20); memory: steps (3)")
    p.add_argument("--rounds", type=int, default=7, help="throughput: rounds of all variants in turn")
    p.add_argument("--seconds", type=float, default=300, help="budget: wall-clock budget per run, seconds")
    p.add_argument("--variants", nargs="+", default=["plain", "K3 [1,2,1]"], help="budget: which variants to train")
    p.add_argument("--lengths", type=int, nargs="+", default=None, help="memory, scaling: sequence lengths T")
    p.add_argument("--window", type=int, default=256, help="memory: attention window (characters)")
    p.add_argument("--data", type=Path, nargs="+", default=[ROOT / "data" / "shakespeare.txt"], help="memory: text")
    p.add_argument("--dense-max", type=int, default=4096, help="scaling: longest T for full or dense-mask attention")
    args = p.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.mode == "throughput":
        args.steps = args.steps or 20
        result = throughput(args)
    elif args.mode == "budget":
        result = budget(args, args.out)
    elif args.mode == "memory":
        args.steps, args.lengths = args.steps or 3, args.lengths or [1024, 4096, 16384]
        result = memory(args, args.out)
    else:
        args.lengths = args.lengths or [256, 1024, 4096, 16384]
        result = scaling(args, args.out)
    meta = {"command": "python bench/long_context.py " + shlex.join(sys.argv[1:]), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_average": os.getloadavg()}
    path = args.out / f"long_context_{args.mode}.json"
    path.write_text(json.dumps({"meta": meta, **result}, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
