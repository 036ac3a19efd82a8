"""Compare the fine-tuning methods (full, freeze, lora, adapter, prefix, adalora) on word segmentation (CTB6),
sentiment classification (ChnSentiCorp) and continued language-model training, and draw label-efficiency curves.

    python -m bench.peft_compare --quick --data-dir $D     # tiny subsets, tiny bases pretrained here: < 3 min
    python -m bench.peft_compare --data-dir $D --encoder out/zh_mlm --lm-base out/chinese_char_cpu --out out/peft_compare

$D is the folder of the public data sets (cws/ctb6, sentiment/chnsenticorp, zh_text; or set CHARFORMER_DATA).

Every run is finetune.py's own `main` (nothing of its logic is repeated here), each in a forked child process:
this parent imports torch but computes nothing, so forking is safe, and each child's peak resident memory is its
own. Per task and method the table gives the trainable parameters (and their share of the total: body, added
modules and head), the dev and test metric of the best checkpoint (cws: word F1; sentiment: accuracy; lm: bits
per character on the new text, and the change of bits/char on the base's own validation text, "forgetting"),
the training time per epoch (train_seconds / epochs: optimizer steps only, evaluation excluded), the peak
resident set size of the run's process (ru_maxrss from resource.getrusage, recorded by finetune.py; it
includes the ~150-300 MiB of the Python and torch runtime, so on small models the differences between methods
are small) and what OUT/best takes on disk (the adapter; for full, the whole checkpoint).

All methods train with the same schedule and learning rate (finetune.py's defaults unless --finetune-args
says otherwise): a same-budget comparison, not each method at its own best learning rate. lm runs the base on
new text (default: 红楼梦, a different novel than the base's 西游记), measures forgetting on the base's
validation split, and adds one run of full fine-tuning with rehearsal (--rehearsal-share of each batch from the
base's training text) and one per --ewc lambda with elastic weight consolidation (its Fisher information from
the base's next-character loss on that text).

Label efficiency: the test metric against the number of training examples (--curve-sizes, plus all), for full
fine-tuning from the pretrained encoder and from scratch (the same architecture, random weights, a vocabulary
from the training subset). Small subsets train for at least --curve-min-steps steps, so that they are not also
starved of updates.

Outputs in --out (default out/peft_compare, or out/peft_compare_quick; out/ is not versioned: copy the three
summary files to bench/results/ to keep them): runs/<name>/ (each finetune.py output directory, and its log),
data/ (the files made here), results.json (every row and curve point), table.md, label_efficiency.png. A run
whose results.json exists from the same arguments is reused, so an interrupted comparison continues where it
stopped, and runs made by separate invocations (--tasks cws, then --tasks lm, ...) come together in a last one
over every task (--rerun: redo all).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

import finetune
import pretrain
from charformer.checkpoint import resolve
from charformer.data import read_corpus, read_text, split_corpus
from charformer.errors import run_cli
from charformer.peft import METHODS
from charformer.runlog import plt  # matplotlib without a display

METRIC = {"cws": "f1", "classify": "accuracy", "lm": "bpc"}
TASK_NAMES = {"cws": "CWS (CTB6), word F1", "classify": "sentiment (ChnSentiCorp), accuracy", "lm": "LM, bits/char"}
QUICK_MODEL = ["--n-layers", "1", "--n-heads", "2", "--d-model", "32", "--block-size", "32"]
ARCH_FIELDS = ("n_layers", "n_heads", "d_model", "d_ff", "block_size", "norm", "rope_base", "window", "dropout")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny subsets of the data, tiny bases pretrained here, 15 "
                   "steps per run (a smoke test of the whole pipeline, not a measurement)")
    p.add_argument("--out", default=None, help="output directory (default out/peft_compare, or out/peft_compare_quick)")
    p.add_argument("--tasks", default="cws,classify,lm", help="comma-separated subset of cws, classify, lm")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS))
    p.add_argument("--encoder", default="out/zh_mlm", help="pretrained bidirectional checkpoint for cws and "
                   "classify (pretrain.py --objective mlm)")
    p.add_argument("--lm-base", default="out/chinese_char_cpu", help="pretrained causal checkpoint for lm")
    p.add_argument("--data-dir", default=os.environ.get("CHARFORMER_DATA"), help="folder of the data sets: "
                   "cws/ctb6, sentiment/chnsenticorp, zh_text/hongloumeng.txt (default: $CHARFORMER_DATA); the "
                   "three options below name files or folders elsewhere")
    p.add_argument("--lm-base-text", default="data/xiyouji_1-17.txt", help="the text --lm-base was "
                   "pretrained on: its validation split (the base's val_fraction) measures forgetting, the rest "
                   "is rehearsed")
    p.add_argument("--lm-new-text", default=None, help="the new text (default: DATA_DIR/zh_text/hongloumeng.txt): its last "
                   "2 x --lm-eval-chars characters become dev and test, the rest (up to --lm-train-chars) training")
    p.add_argument("--lm-train-chars", type=int, default=None, help="cap on the new training text (default: all)")
    p.add_argument("--lm-eval-chars", type=int, default=20000, help="characters of new text in dev, and in test")
    p.add_argument("--cws-dir", default=None, help="train.txt, dev.txt, test.txt (default: DATA_DIR/cws/ctb6)")
    p.add_argument("--sentiment-dir", default=None, help="train/dev/test.tsv (default: "
                   "DATA_DIR/sentiment/chnsenticorp)")
    p.add_argument("--epochs", type=float, default=1.0, help="cws and classify: epochs per run")
    p.add_argument("--lm-steps", type=int, default=400, help="lm: optimizer steps per run (400 x 32 blocks of 64 "
                   "characters: about one pass over the new training text)")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per step (every run)")
    p.add_argument("--rehearsal-share", type=float, default=0.25, help="lm: the extra full run with this share of "
                   "each batch from the base's text (0: no such run)")
    p.add_argument("--ewc", default="", help="lm: comma-separated EWC lambdas, an extra full run for each, the Fisher "
                   "information from the base's training text (empty: none)")
    p.add_argument("--curve-sizes", default="100,1000,10000", help="training-set sizes of the label-efficiency "
                   "curve, besides all (empty: no curve)")
    p.add_argument("--curve-min-steps", type=int, default=200, help="fewest steps of a curve run")
    p.add_argument("--finetune-args", default="", help="more finetune.py options for every run, e.g. '--lr 3e-3'")
    p.add_argument("--rerun", action="store_true", help="redo runs whose results exist")
    return p


# ------------------------------------------------------------------------------------------ running children


def _child(target, argv: list[str], log: str) -> None:
    with open(log, "w", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        run_cli(lambda: target(argv))


def run_child(target, argv: list[str], log: Path) -> None:
    """``target(argv)`` (finetune.main or pretrain.main) in a forked process, its output in `log`."""
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(target, argv, str(log)))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        sys.exit(f"failed with exit status {proc.exitcode}: {' '.join(argv)}\n  see {log}")


def finetune_run(out: Path, name: str, argv: list[str], rerun: bool) -> dict:
    """results.json of ``finetune.py ARGV --out OUT/runs/NAME``, reused when the same arguments ran before."""
    run_dir = out / "runs" / name
    argv = [*argv, "--out", str(run_dir), "--overwrite"]
    done = run_dir / "results.json"
    if not rerun and done.exists() and (run_dir / "bench_args.json").exists() \
            and json.loads((run_dir / "bench_args.json").read_text()) == argv:
        print(f"  {name}: reusing {done}")
        return json.loads(done.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    run_child(finetune.main, argv, run_dir.parent / f"{name}.log")
    (run_dir / "bench_args.json").write_text(json.dumps(argv) + "\n")
    print(f"  {name}: {time.time() - t0:.0f} s")
    return json.loads(done.read_text())


# ----------------------------------------------------------------------------------------------- the data


def head_lines(src: Path, dst: Path, n: int, header: bool = False) -> Path:
    """The first `n` records of a one-per-line file (after its header line, kept, when `header`)."""
    lines = read_text(src).split("\n")  # LF only: other line separators (U+2028, ...) can be text here
    dst.write_text("".join(line + "\n" for line in lines[: n + header]), encoding="utf-8")
    return dst


def lm_files(args, data: Path, base: Path, base_text: Path) -> dict[str, Path]:
    """New-text train/dev/test, and the base's validation text and rehearsal text (as pretrain.py split it)."""
    meta = json.loads((base / "config.json").read_text())
    val_fraction = meta.get("data", {}).get("val_fraction", 0.1)
    rehearse, original = split_corpus(read_corpus([base_text]), val_fraction)
    new = read_corpus([args.lm_new_text])
    k = args.lm_eval_chars
    train = new[: -2 * k] if args.lm_train_chars is None else new[: min(len(new) - 2 * k, args.lm_train_chars)]
    texts = {"train": train, "dev": new[-2 * k: -k], "test": new[-k:], "original": original, "rehearsal": rehearse}
    files = {name: data / f"lm_{name}.txt" for name in texts}
    for name, text in texts.items():
        files[name].write_text(text, encoding="utf-8")
    return files


def prepare(args, out: Path) -> tuple[dict, dict]:
    """The bases (encoder, lm) and the files of every task. --quick: subsets and tiny bases made here."""
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    cws, senti = Path(args.cws_dir), Path(args.sentiment_dir)
    files = {"cws": {s: cws / f"{s}.txt" for s in ("train", "dev", "test")},
             "classify": {s: senti / f"{s}.tsv" for s in ("train", "dev", "test")}}
    bases = {"encoder": Path(args.encoder), "lm": Path(args.lm_base)}
    lm_text = Path(args.lm_base_text)
    if args.quick:
        sizes = {"train": 200, "dev": 30, "test": 30}
        files = {task: {s: head_lines(p, data / f"{task}_{s}{p.suffix}", sizes[s], header=task == "classify")
                        for s, p in split.items()} for task, split in files.items()}
        lm_text = data / "lm_base_text.txt"
        lm_text.write_text(read_corpus([args.lm_base_text])[:20000], encoding="utf-8")
        tiny = [*QUICK_MODEL, "--batch-size", "8", "--max-steps", "30", "--device", "cpu", "--overwrite"]
        bases = {"encoder": out / "bases" / "encoder", "lm": out / "bases" / "lm"}
        print("pretraining the tiny bases")
        if {"cws", "classify"} & set(args.tasks):
            run_child(pretrain.main, ["--objective", "mlm", "--data-format", "cws", "--packing", "lines", "--data",
                                      str(files["cws"]["train"]), "--out", str(bases["encoder"]), *tiny],
                      data / "encoder.log")
        if "lm" in args.tasks:
            run_child(pretrain.main, ["--data", str(lm_text), "--out", str(bases["lm"]), *tiny], data / "lm.log")
    if "lm" in args.tasks:
        files["lm"] = lm_files(args, data, resolve(bases["lm"]), lm_text)
    return bases, files


# ------------------------------------------------------------------------------------------------ the runs


def task_args(task: str, files: dict, init: str | Path) -> list[str]:
    split = files[task]
    argv = ["--task", task, "--train", str(split["train"]), "--dev", str(split["dev"]), "--test", str(split["test"]),
            "--init", str(init)]
    if task == "lm":
        argv += ["--original-val", str(split["original"]), "--sample-chars", "60"]
    return argv


def length_args(args, task: str, examples: int | None = None) -> list[str]:
    """Training length of a run: epochs (cws, classify), steps (lm), at least --curve-min-steps for a subset."""
    if args.quick:
        return ["--max-steps", "15", "--eval-interval", "15"]
    if task == "lm":
        return ["--max-steps", str(args.lm_steps), "--eval-interval", str(max(1, args.lm_steps // 4))]
    if examples is not None:
        return ["--max-steps", str(max(args.curve_min_steps, math.ceil(args.epochs * examples / args.batch_size)))]
    return ["--epochs", str(args.epochs)]


def row(task: str, label: str, r: dict) -> dict:
    """One line of the table from a run's results.json."""
    metric = METRIC[task]
    out = {"task": task, "method": label, "trainable_params": r["trainable_params"], "total_params": r["total_params"],
           "trainable_share": r["trainable_share"],
           "dev": r["dev_after"]["bpc"] if task == "lm" else r[f"dev_best_{metric}"],
           "test": r["test_after"][metric], "test_before": r["test_before"][metric],
           "seconds_per_epoch": r["seconds_per_epoch"], "peak_rss_mib": r["peak_rss_mb"],
           "best_kib": r["adapter_bytes"] / 1024, "steps": r["steps"], "epochs": r["epochs"]}
    if task == "lm":
        out["original_bpc_before"], out["original_bpc_after"] = r["original_bpc_before"], r["original_bpc_after"]
        out["forgetting_bpc"] = r["original_bpc_after"] - r["original_bpc_before"]
    return out


def scratch_args(encoder: Path) -> list[str]:
    """Model options giving a random encoder of the pretrained one's architecture."""
    cfg = json.loads((encoder / "config.json").read_text())["model"]
    return ["--causal", "false"] + [a for k in ARCH_FIELDS if cfg.get(k) is not None
                                    for a in (f"--{k.replace('_', '-')}", str(cfg[k]))]


def curve(args, out: Path, files: dict, bases: dict, full_runs: dict, common: list[str]) -> list[dict]:
    """Label-efficiency points: test metric vs training examples, pretrained and scratch, method full."""
    points = []
    sizes = [int(s) for s in args.curve_sizes.split(",") if s]
    for task in [t for t in ("cws", "classify") if t in args.tasks]:
        n_all = full_runs[task]["train_examples"]
        for init in ("pretrained", "scratch"):
            source = bases["encoder"] if init == "pretrained" else "scratch"
            model = scratch_args(resolve(bases["encoder"])) if init == "scratch" else []
            for n in [s for s in sizes if s < n_all] + [None]:
                if n is None and init == "pretrained":
                    r = full_runs[task]  # the comparison's full run is this point
                else:
                    subset = [] if n is None else ["--train-examples", str(n)]
                    r = finetune_run(out, f"curve_{task}_{init}_{n or 'all'}",
                                     [*task_args(task, files, source), *model, *subset, *common,
                                      *length_args(args, task, n)], args.rerun)
                points.append({"task": task, "init": init, "train_examples": r["train_examples"],
                               "test": r["test_after"][METRIC[task]], "steps": r["steps"]})
    return points


# ---------------------------------------------------------------------------------------------- reporting


def markdown(rows: list[dict]) -> str:
    head = ("| task | method | trainable params | % of total | dev | test (before) | s / epoch | peak RSS MiB | "
            "best/ KiB | forgetting bits/char |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for r in rows:
        forget = f"{r['forgetting_bpc']:+.4f}" if "forgetting_bpc" in r else ""
        lines.append(f"| {r['task']} | {r['method']} | {r['trainable_params']:,} | {100 * r['trainable_share']:.2f} | "
                     f"{r['dev']:.4f} | {r['test']:.4f} ({r['test_before']:.4f}) | {r['seconds_per_epoch']:.1f} | "
                     f"{r['peak_rss_mib']:.0f} | {r['best_kib']:,.0f} | {forget} |")
    return head + "\n".join(lines) + "\n"


def plot_curve(points: list[dict], png: Path) -> None:
    tasks = sorted({p["task"] for p in points})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for init, style in (("pretrained", "o-"), ("scratch", "s--")):
            pts = sorted((p["train_examples"], p["test"]) for p in points if p["task"] == task and p["init"] == init)
            ax.plot(*zip(*pts), style, label=init)
        ax.set_xscale("log")
        ax.set_xlabel("training examples")
        ax.set_title(TASK_NAMES[task])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def against_forgetting(args, files: dict) -> list[tuple[str, str, list[str]]]:
    """lm's extra full runs: (row label, run name, finetune.py flags) for rehearsal and for each EWC lambda, both
    on the base's training text."""
    original = str(files["lm"]["rehearsal"])
    runs = [(f"full + rehearsal {args.rehearsal_share:g}", "lm_full_rehearsal",
             ["--rehearsal-data", original, "--rehearsal-share", str(args.rehearsal_share)])] \
        if args.rehearsal_share > 0 else []
    return runs + [(f"full + EWC {lam}", f"lm_full_ewc{lam}", ["--ewc", lam, "--ewc-data", original])
                   for lam in args.ewc.split(",") if lam]


def main(argv: list[str] | None = None) -> int:
    t_start = time.time()
    args = build_parser().parse_args(argv)
    args.tasks = [t for t in args.tasks.split(",") if t]
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(args.tasks) - set(METRIC)) + sorted(set(methods) - set(METHODS))
    if unknown:
        sys.exit(f"unknown task or method: {', '.join(unknown)}")
    for name, default in (("cws_dir", "cws/ctb6"), ("sentiment_dir", "sentiment/chnsenticorp"),
                          ("lm_new_text", "zh_text/hongloumeng.txt")):
        if getattr(args, name) is None:
            if args.data_dir is None:
                sys.exit(f"give --data-dir DIR (or set CHARFORMER_DATA), or --{name.replace('_', '-')}")
            setattr(args, name, str(Path(args.data_dir) / default))
    out = Path(args.out or Path("out") / ("peft_compare_quick" if args.quick else "peft_compare"))
    if args.quick:
        shutil.rmtree(out, ignore_errors=True)  # a smoke test starts clean
        args.curve_sizes, args.lm_eval_chars, args.lm_train_chars = "50", 2000, 20000
    bases, files = prepare(args, out)
    common = ["--batch-size", str(8 if args.quick else args.batch_size), "--device", "cpu", *args.finetune_args.split()]
    rows, full_runs = [], {}
    for task in args.tasks:
        print(f"{task}:")
        base = bases["lm" if task == "lm" else "encoder"]
        for method in methods:
            r = finetune_run(out, f"{task}_{method}", [*task_args(task, files, base), "--method", method, *common,
                                                       *length_args(args, task)], args.rerun)
            rows.append(row(task, method, r))
            if method == "full":
                full_runs[task] = r
        for label, name, flags in (against_forgetting(args, files) if task == "lm" and "full" in methods else ()):
            r = finetune_run(out, name, [*task_args(task, files, base), "--method", "full", *flags, *common,
                                         *length_args(args, task)], args.rerun)
            rows.append(row(task, label, r))
    points = []
    if args.curve_sizes and "full" in methods and {"cws", "classify"} & set(args.tasks):
        print("label efficiency:")
        points = curve(args, out, files, bases, full_runs, common)
        plot_curve(points, out / "label_efficiency.png")
    table = markdown(rows)
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"quick": args.quick, "bases": {k: str(v) for k, v in bases.items()},
                                                  "rows": rows, "label_efficiency": points,
                                                  "wall_seconds": round(time.time() - t_start, 1)}, indent=2) + "\n")
    print("\n" + table)
    for p in points:
        print(f"label efficiency: {p['task']:<8} {p['init']:<10} {p['train_examples']:>6} examples  test "
              f"{METRIC[p['task']]} {p['test']:.4f}")
    print(f"\n{out / 'table.md'}  {out / 'results.json'}" + (f"  {out / 'label_efficiency.png'}" if points else "")
          + f"   ({time.time() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    run_cli(main)
