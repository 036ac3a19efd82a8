"""The fine-tuning toolbox one method at a time: each of `charformer.finetuning`'s methods alone, and a
combination, against plain full fine-tuning of the same pretrained body on the same budget (optimizer steps,
batch, learning rate, schedule, seed), on ChnSentiCorp (classification) or CTB6 (word segmentation).

    python -m bench.toolbox_methods --task classify --init out/enc/plain_mlm --max-steps 150 --combo ema,tapt
    python -m bench.toolbox_methods --task cws --init out/enc/plain_mlm --max-steps 300 --combo fgm,rdrop,ema
    charformer bench toolbox_methods --task classify --init out/enc/plain_mlm --results results.json

Each row is one call of finetune.py's `main` (nothing of its logic repeated here) with the base options and the
method's own flags:

    plain     nothing added                       fgm / pgd   --adversarial fgm|pgd (Miyato 2017 / Madry 2018)
    rdrop     --rdrop ALPHA (Liang et al. 2021)   ema         --ema DECAY
    average   --average-last N                    augment     --augment (classify: delete,swap,insert; cws:
    tapt      --init: the body after --tapt-steps                          concat,split)
              more masked-LM steps on the task's own training text (Gururangan et al. 2020)
    ensemble  the plain run and --ensemble-seeds more plain runs, their probabilities averaged
              (`charformer.finetuning.ensemble`), scored here on dev and test
    combo     the methods named by --combo together (tapt included: from the task-adapted body)

Tagging runs use a softmax head (no CRF): a CRF's scores cannot be averaged per character, and every row must be
the same model for the table to compare methods. The checkpoint scored is the best on dev (the averaged weights
for ema and average). Outputs in --out (out/ is not versioned): runs/, data/, results.json (each row's test and dev
metric, seconds per epoch, its flags, the command); --results FILE copies results.json there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import finetune
import pretrain
from bench import data_dir, write_json_results
from bench.toolbox import write_reviews
from charformer.errors import CharformerError, run_cli
from charformer.finetuning.ensemble import ensemble_label_probs
from charformer.tasks.checkpoint import load_task_checkpoint
from charformer.tasks.metrics import classification_scores, cws_scores
from charformer.tasks.readers import read_cws, read_labeled
from charformer.tasks.schemes import spans_to_words
from charformer.tasks.segmenter import Segmenter

AUGMENT = {"classify": "delete,swap,insert", "cws": "concat,split"}
METRIC = {"classify": "accuracy", "cws": "f1"}


def method_flags(args) -> dict[str, list[str]]:
    """Each method's finetune.py flags on top of the base options (ensemble and tapt: none of their own)."""
    return {"plain": [], "fgm": ["--adversarial", "fgm", "--adv-eps", str(args.adv_eps)],
            "pgd": ["--adversarial", "pgd", "--adv-eps", str(args.adv_eps)], "rdrop": ["--rdrop", str(args.rdrop)],
            "ema": ["--ema", str(args.ema)], "average": ["--average-last", str(args.average_last)],
            "augment": ["--augment", AUGMENT[args.task]], "tapt": [], "ensemble": []}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", choices=("classify", "cws"), required=True)
    p.add_argument("--init", required=True, help="the pretrained masked LM every row starts from (pretrain.py --out)")
    p.add_argument("--data", default=None, help="folder with train/dev/test (default: ../shared/data/sentiment/"
                   "chnsenticorp with .tsv, or ../shared/data/cws/ctb6 with .txt)")
    p.add_argument("--out", default=None, help="output folder, out/toolbox_methods_TASK if not given (a finished "
                   "run found there is reused: one folder per task and body)")
    p.add_argument("--results", default="", help="also copy results.json to this file")
    p.add_argument("--methods", default="plain,fgm,pgd,rdrop,ema,average,augment,tapt,ensemble",
                   help="comma-separated rows, in order (plain always runs: the ensemble and the table need it)")
    p.add_argument("--combo", default="", help="comma-separated methods for one more row, all together")
    p.add_argument("--max-steps", type=int, default=150, help="optimizer steps of every fine-tuning run")
    p.add_argument("--evals", type=int, default=3, help="evaluations on dev per run (the average row averages them)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--adv-eps", type=float, default=0.1, help="fgm, pgd: L2 radius per sequence; the body's "
                   "character embeddings have norms near 0.6, so 1.0 can turn a character into another")
    p.add_argument("--rdrop", type=float, default=1.0)
    p.add_argument("--ema", type=float, default=0.99)
    p.add_argument("--average-last", type=int, default=3)
    p.add_argument("--ensemble-seeds", type=int, default=2, help="plain runs with other seeds in the ensemble")
    p.add_argument("--tapt-steps", type=int, default=300, help="masked-LM steps on the task's training text")
    p.add_argument("--device", default="cpu")
    return p


def task_files(args) -> dict[str, Path]:
    ext = "tsv" if args.task == "classify" else "txt"
    root = Path(args.data) if args.data else data_dir() / ("sentiment/chnsenticorp" if args.task == "classify"
                                                           else "cws/ctb6")
    return {split: root / f"{split}.{ext}" for split in ("train", "dev", "test")}


def task_adapted_body(args, files: dict[str, Path], out: Path) -> Path:
    """`--init` after --tapt-steps more masked-LM steps on the training split's text (labels and word
    boundaries dropped), validated on the dev split's text."""
    body = out / "runs" / "tapt_mlm"
    if (body / "results.json").exists():
        return body
    text = {}
    for split in ("train", "dev"):
        text[split] = out / "data" / f"{split}_text.txt"
        if args.task == "classify":
            write_reviews(files[split], text[split])
        else:
            text[split].write_text("".join(s.text + "\n" for s in read_cws(files[split])), "utf-8")
    pretrain.main(["--init", str(args.init), "--data", str(text["train"]), "--val", str(text["dev"]),
                   "--objective", "mlm", "--packing", "lines", "--out", str(body), "--overwrite",
                   "--max-steps", str(args.tapt_steps), "--batch-size", str(args.batch_size),
                   "--warmup-steps", str(min(100, args.tapt_steps // 10)), "--eval-interval", str(args.tapt_steps),
                   "--device", args.device])
    return body


def finetune_run(args, files: dict[str, Path], run: Path, init: Path, flags: list[str], seed: int) -> dict:
    """One finetune.py run (skipped if `run` already holds its results); its results.json."""
    if not (run / "results.json").exists():
        interval = max(1, args.max_steps // args.evals)
        head = ["--crf", "false"] if args.task == "cws" else []
        finetune.main(["--task", args.task, "--init", str(init), "--train", str(files["train"]), "--dev",
                       str(files["dev"]), "--test", str(files["test"]), "--out", str(run), "--overwrite",
                       "--max-steps", str(args.max_steps), "--eval-interval", str(interval), "--batch-size",
                       str(args.batch_size), "--lr", str(args.lr), "--warmup-steps", str(args.warmup_steps),
                       "--seed", str(seed), "--device", args.device, *head, *flags])
    return json.loads((run / "results.json").read_text())


def row(name: str, flags: list[str], r: dict, task: str) -> dict:
    metric = METRIC[task]
    return {"method": name, "flags": " ".join(flags), f"test_{metric}": r["test_after"][metric],
            f"dev_{metric}": r[f"dev_best_{'accuracy' if task == 'classify' else 'f1'}"],
            "seconds_per_epoch": round(r["seconds_per_epoch"], 1), "train_seconds": round(r["train_seconds"], 1),
            **({"test_oov_recall": r["test_after"]["oov_recall"]} if task == "cws" else {})}


def ensemble_scores(task: str, ckpts: list[Path], path: Path, train_path: Path) -> dict:
    """The ensemble of `ckpts` (their best/) scored on the file at `path`: accuracy, or word F1 and OOV
    recall (out-of-vocabulary: words not in `train_path`)."""
    members = [load_task_checkpoint(c, device="cpu") for c in ckpts]
    with torch.inference_mode():
        if task == "classify":
            docs = read_labeled(path)
            labels = members[0][2]["labels"]
            probs = ensemble_label_probs(members, [d.text for d in docs], batch_size=64)
            return classification_scores([d.label for d in docs], [labels[i] for i in probs.argmax(-1)], labels)
        gold = [spans_to_words(s.text, s.spans) for s in read_cws(path)]
        pred = Segmenter.ensemble(members, [str(c) for c in ckpts]).segment(["".join(w) for w in gold])
        return cws_scores(gold, pred, [w for s in read_cws(train_path) for w in spans_to_words(s.text, s.spans)])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.time()
    flags = method_flags(args)
    names = [m for m in args.methods.split(",") if m]
    combo = [m for m in args.combo.split(",") if m]
    unknown = sorted(set(names + combo) - set(flags))
    if unknown or "ensemble" in combo:
        raise CharformerError(f"unknown or uncombinable methods {unknown or ['ensemble']}; choose from "
                              f"{', '.join(flags)} (--combo: all but ensemble)")
    files, out = task_files(args), Path(args.out or f"out/toolbox_methods_{args.task}")
    (out / "data").mkdir(parents=True, exist_ok=True)
    runs, rows = out / "runs", []
    plain = finetune_run(args, files, runs / "plain", Path(args.init), [], args.seed)
    for name in ["plain", *(n for n in names if n != "plain")]:
        if name == "ensemble":
            seeds = [args.seed + i for i in range(1, args.ensemble_seeds + 1)]
            ckpts = [runs / "plain"] + [runs / f"plain_seed{s}" for s in seeds]
            for ckpt, seed in zip(ckpts[1:], seeds):
                finetune_run(args, files, ckpt, Path(args.init), [], seed)
            best = [c / "best" for c in ckpts]
            test, dev = (ensemble_scores(args.task, best, files[s], files["train"]) for s in ("test", "dev"))
            m = METRIC[args.task]
            rows.append({"method": "ensemble", "flags": f"{len(ckpts)} plain runs, seeds {args.seed}..",
                         f"test_{m}": test[m], f"dev_{m}": dev[m],
                         "seconds_per_epoch": round(plain["seconds_per_epoch"] * len(ckpts), 1),
                         **({"test_oov_recall": test["oov_recall"]} if args.task == "cws" else {})})
            continue
        init = task_adapted_body(args, files, out) if name == "tapt" else Path(args.init)
        r = plain if name == "plain" else finetune_run(args, files, runs / name, init, flags[name], args.seed)
        rows.append(row(name, flags[name] + ([f"--init {init}"] if name == "tapt" else []), r, args.task))
    if combo:
        init = task_adapted_body(args, files, out) if "tapt" in combo else Path(args.init)
        combined = [f for m in combo for f in flags[m]]
        r = finetune_run(args, files, runs / ("combo_" + "_".join(combo)), init, combined, args.seed)
        rows.append(row("+".join(combo), combined + ([f"--init {init}"] if "tapt" in combo else []), r,
                        args.task))
    results = {"command": " ".join(["python -m bench.toolbox_methods", *(argv if argv is not None else sys.argv[1:])]),
               "task": args.task, "init": args.init, "max_steps": args.max_steps, "batch_size": args.batch_size,
               "rows": rows, "wall_seconds": round(time.time() - t0, 1)}
    write_json_results(results, out, args.results)
    m = METRIC[args.task]
    for r in rows:
        print(f"{r['method']:<24} test {m} {100 * r[f'test_{m}']:.2f}  dev {100 * r[f'dev_{m}']:.2f}  "
              f"s/epoch {r['seconds_per_epoch']:.0f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
