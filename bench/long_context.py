"""Long character text made cheap: hourglass vs plain, windowed attention, memory and time per character vs T.

    python -m bench.long_context throughput   # training chars/s, plain vs hourglass (Tiny Shakespeare CPU shape)
    python -m bench.long_context budget       # pretrain.py runs on the same wall-clock budget: val bits/char
    python -m bench.long_context memory       # pretrain.py --window 256 --attn-impl local at T = 1K, 4K, 16K: peak RSS
    python -m bench.long_context scaling      # memory and time per character vs T, every attention kind (PNG)
    python -m bench.long_context context      # one text, blocks of 256 / 1,024 / 4,096 on the same characters

Each writes ``OUT/long_context_<mode><TAG>.json`` (OUT = ``out/`` unless ``--out``, TAG = ``--tag``) with the
command that made it. throughput, budget and context train the model of ``--config`` (default: the Tiny
Shakespeare CPU shape) on ``--data`` (default: the config's own text); for a Chinese novel, for example::

    python -m bench.long_context throughput --config configs/chinese_char_cpu.toml \
        --data ../shared/data/zh_text/hongloumeng.txt --tag _hongloumeng
    python -m bench.long_context budget --config configs/chinese_char_cpu.toml \
        --data ../shared/data/zh_text/hongloumeng.txt --tag _hongloumeng --variants plain 'K2 [1,3,0]' 'K3 [1,3,0]'

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
* context: ``pretrain.py`` at each block size of ``--lengths`` (default 256, 1,024, 4,096), full causal attention,
  for each of ``--variants``, on the same number of training characters (``--chars-per-step`` characters per
  step, the batch = chars-per-step / T rows, for ``--context-steps`` steps); reports validation bits/char over the
  whole validation text, scored in consecutive windows of the model's own block size, and training chars/s.
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
from charformer.data import read_corpus
from charformer.model import CharTransformer, ModelConfig
from charformer.vocab import CharVocab

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


def cpu_shape(config: str = CPU_CONFIG) -> dict:
    """The model and batch of a config (default configs/shakespeare_char_cpu.toml)."""
    cfg = load_toml(ROOT / config)
    return {k: cfg[k] for k in ("n_layers", "n_heads", "d_model", "block_size", "norm", "batch_size")}


def text_files(args) -> list[str]:
    """--data, or the config's own text; paths relative to the repository root (where pretrain.py runs)."""
    files = args.data or [ROOT / f for f in load_toml(ROOT / args.config)["data"]]
    return [os.path.relpath(Path(f).resolve(), ROOT) for f in files]


def vocab_size(args) -> int:
    """Size of the vocabulary pretrain.py builds from the text (every character, plus the special tokens)."""
    return len(CharVocab.build([read_corpus([ROOT / f for f in text_files(args)])]))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train_step(model, opt, x) -> None:
    loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def throughput(args) -> dict:
    shape = cpu_shape(args.config)
    batch = shape.pop("batch_size")
    vocab = vocab_size(args)
    models = {}
    for name, over in HOURGLASS.items():
        torch.manual_seed(0)
        model = CharTransformer(ModelConfig(vocab_size=vocab, **shape, **over))
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    x = torch.randint(7, vocab, (batch, shape["block_size"] + 1))
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
    return {"config": args.config, "data": text_files(args), "vocab_size": vocab, "shape": shape, "batch_size": batch,
            "steps_per_round": args.steps, "rounds": args.rounds, "rows": rows}


def flags(overrides: dict) -> list[str]:
    out = []
    for k, v in overrides.items():
        out += ["--" + k.replace("_", "-"), *map(str, v if isinstance(v, list) else [v])]
    return out


def slug(name: str) -> str:
    """A variant's name as a folder name: "K3 [1,2,1]" -> "K3-1-2-1"."""
    return "".join("-" if c in " ," else c for c in name if c not in "[]")


def pretrain_row(run: Path, argv: list[str]) -> dict:
    """Run ``pretrain.py ARGV --out RUN`` to the end; its results (val bits/char over the whole validation
    text, steps, seconds) and the command."""
    cmd = [sys.executable, "pretrain.py", *argv, "--out", str(run), "--overwrite"]
    print("$", shlex.join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit(f"pretrain.py failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    res = json.loads((ROOT / run / "results.json").read_text())
    row = {k: res[k] for k in ("val_loss", "val_bpc", "steps", "chars_seen", "train_seconds", "wall_seconds")}
    row["train_chars_per_s"] = res["chars_seen"] / res["train_seconds"]
    row["command"] = "python " + shlex.join(cmd[1:])
    return row


def budget(args, out: Path) -> dict:
    measured = json.loads((out / f"long_context_throughput{args.tag}.json").read_text())["rows"]
    shape = cpu_shape(args.config)
    plain_steps_per_s = measured["plain"]["chars_per_s_median"] / (shape["batch_size"] * shape["block_size"])
    base_steps = int(args.seconds * plain_steps_per_s)
    rows = {}
    for name in args.variants:
        steps = int(base_steps * measured[name]["ratio_to_plain_median"])
        run = Path(os.path.relpath(out, ROOT)) / f"long_context_budget{args.tag}" / slug(name)
        argv = ["--config", args.config, *(["--data", *text_files(args)] if args.data else []),
                "--max-steps", str(steps), "--eval-interval", str(max(steps // 4, 1)), *flags(HOURGLASS[name])]
        rows[name] = pretrain_row(run, argv)
        print(f"{name:>12}: {steps} steps, val {rows[name]['val_bpc']:.4f} bits/char, "
              f"{rows[name]['train_seconds']:.0f} s training", flush=True)
    return {"config": args.config, "data": text_files(args), "seconds": args.seconds,
            "plain_steps_per_s": plain_steps_per_s, "rows": rows}


def context(args, out: Path) -> dict:
    rows = []
    for name in args.variants:
        for t in args.lengths:
            if args.chars_per_step % t:
                raise SystemExit(f"--chars-per-step {args.chars_per_step} is not a multiple of T = {t}")
            run = Path(os.path.relpath(out, ROOT)) / f"long_context_context{args.tag}" / f"{slug(name)}-T{t}"
            argv = ["--config", args.config, *(["--data", *text_files(args)] if args.data else []),
                    "--block-size", str(t), "--batch-size", str(args.chars_per_step // t),
                    "--max-steps", str(args.context_steps), "--warmup-steps", str(max(args.context_steps // 10, 1)),
                    "--eval-interval", str(max(args.context_steps // 4, 1)), "--eval-batches", "4",
                    *flags(HOURGLASS[name])]
            rows.append({"variant": name, "T": t, **pretrain_row(run, argv)})
            r = rows[-1]
            print(f"{name:>12} T={t:>5}: val {r['val_bpc']:.4f} bits/char, {r['train_chars_per_s']:,.0f} chars/s, "
                  f"{r['train_seconds']:.0f} s", flush=True)
    return {"config": args.config, "data": text_files(args), "chars_per_step": args.chars_per_step,
            "steps": args.context_steps, "rows": rows}


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
    data = text_files(args)
    for t in args.lengths:
        run = Path(os.path.relpath(out, ROOT)) / "long_context_memory" / str(t)
        argv = ["pretrain", "--config", args.config, "--data", *data, "--out", str(run),
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


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        return child(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("throughput", "budget", "memory", "scaling", "context"))
    p.add_argument("--config", default=CPU_CONFIG, help="throughput, budget, context: the model and training "
                   "config (a path relative to the repository root)")
    p.add_argument("--tag", default="", help="suffix of the result file's name (and of budget's throughput file)")
    p.add_argument("--out", type=Path, default=ROOT / "out", help="folder for the results (default: out/)")
    p.add_argument("--steps", type=int, default=None, help="throughput: steps per round (20); memory: steps (3)")
    p.add_argument("--rounds", type=int, default=7, help="throughput: rounds of all variants in turn")
    p.add_argument("--seconds", type=float, default=300, help="budget: wall-clock budget per run, seconds")
    p.add_argument("--variants", nargs="+", default=["plain", "K3 [1,2,1]"], help="budget, context: which variants to train")
    p.add_argument("--lengths", type=int, nargs="+", default=None, help="memory, scaling: sequence lengths T")
    p.add_argument("--window", type=int, default=256, help="memory: attention window (characters)")
    p.add_argument("--data", type=Path, nargs="+", default=None, help="the text (default: the config's)")
    p.add_argument("--chars-per-step", type=int, default=4096, help="context: training characters per step")
    p.add_argument("--context-steps", type=int, default=300, help="context: training steps of every run")
    p.add_argument("--dense-max", type=int, default=4096, help="scaling: longest T for full or dense-mask attention")
    args = p.parse_args(argv)
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
    elif args.mode == "scaling":
        args.lengths = args.lengths or [256, 1024, 4096, 16384]
        result = scaling(args, args.out)
    else:
        args.lengths = args.lengths or [256, 1024, 4096]
        result = context(args, args.out)
    meta = {"command": "python -m bench.long_context " + shlex.join(argv), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_average": os.getloadavg()}
    path = args.out / f"long_context_{args.mode}{args.tag}.json"
    path.write_text(json.dumps({"meta": meta, **result}, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
