"""Two classification tasks in sequence: how much of the first a classifier keeps after learning the second,
with plain fine-tuning, EWC and rehearsal (`charformer.finetuning.continual`).

    python -m bench.continual --init out/enc/plain_mlm --ewc 1e3,1e4,1e5 --results results.json
    charformer bench continual --init out/enc/plain_mlm

Task A is ChnSentiCorp (sentiment of hotel, book and product reviews, 2 labels). Task B is the domain of a
sentence (3 labels: news from CTB6, Wikipedia from UD Chinese, a web novel from Zhuxian), made here from the
word-segmentation corpora: the first --domain-train sentences of each corpus's published train split and the
first --domain-eval of its dev and test splits, words joined back into text. A is learned first, from --init;
every row then learns B from A's checkpoint with the same steps, batch, learning rate, schedule and seed, and
reads A's test set with A's frozen head on the new body (finetune.py --original-val):

    plain             nothing added
    ewc LAMBDA        --ewc LAMBDA --ewc-data A_TRAIN (Fisher information of A's loss, through A's head)
    rehearsal SHARE   --rehearsal-data A_TRAIN --rehearsal-share SHARE (A's texts in every batch, A's head)

Each run is one call of finetune.py's `main`. Outputs in --out (out/ is not versioned): data/ (task B's files),
runs/ (a finished run found there is reused), results.json (A's test accuracy after A and after B, the
forgetting, B's test and dev accuracy, seconds, each row's flags, the command); --results FILE copies it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench import data_dir, write_json_results
from bench.toolbox_methods import finetune_run
from charformer.errors import run_cli
from charformer.tasks.readers import read_cws

DOMAINS = {"news": "cws/ctb6", "wikipedia": "cws/udc", "novel": "cws/zx"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--init", required=True, help="the pretrained masked LM task A starts from (pretrain.py --out)")
    p.add_argument("--out", default="out/continual", help="output folder (finished runs found there are reused)")
    p.add_argument("--results", default="", help="also copy results.json to this file")
    p.add_argument("--ewc", default="1e3,1e4,1e5", help="comma-separated EWC lambdas, one row each")
    p.add_argument("--rehearsal", default="0.25", help="comma-separated rehearsal shares, one row each")
    p.add_argument("--combo", default="", help="LAMBDA,SHARE: one more row with EWC and rehearsal together")
    p.add_argument("--steps-a", type=int, default=300, help="optimizer steps on task A (sentiment)")
    p.add_argument("--max-steps", type=int, default=200, help="optimizer steps on task B (domain), every row")
    p.add_argument("--evals", type=int, default=2, help="evaluations on dev per run")
    p.add_argument("--domain-train", type=int, default=2000, help="task B training sentences per domain")
    p.add_argument("--domain-eval", type=int, default=300, help="task B dev and test sentences per domain")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=30)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cpu")
    return p


def write_domain_task(root: Path, out: Path, n_train: int, n_eval: int) -> dict[str, Path]:
    """Task B's train/dev/test TSV files ("label<TAB>text_a") under `out` from the corpora under `root`: the
    first sentences of each split of each corpus of `DOMAINS`, words joined (no sentence is altered or cut)."""
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n in (("train", n_train), ("dev", n_eval), ("test", n_eval)):
        rows = ["label\ttext_a"]
        for label, corpus in DOMAINS.items():
            sentences = read_cws(root / corpus / f"{split}.txt")[:n]
            rows += [f"{label}\t{s.text}" for s in sentences]
        files[split] = out / f"{split}.tsv"
        files[split].write_text("\n".join(rows) + "\n", encoding="utf-8")
    return files


def variants(args, a_train: Path) -> list[tuple[str, list[str]]]:
    """Each row's name and its finetune.py flags beyond the shared ones."""
    def ewc(lam: str) -> list[str]:
        return ["--ewc", lam, "--ewc-data", str(a_train)]

    def rehearse(share: str) -> list[str]:
        return ["--rehearsal-data", str(a_train), "--rehearsal-share", share]

    rows = [("plain", [])]
    rows += [(f"ewc {lam}", ewc(lam)) for lam in args.ewc.split(",") if lam]
    rows += [(f"rehearsal {share}", rehearse(share)) for share in args.rehearsal.split(",") if share]
    if args.combo:
        lam, share = args.combo.split(",")
        rows.append((f"ewc {lam} + rehearsal {share}", ewc(lam) + rehearse(share)))
    return rows


def row(name: str, flags: list[str], r: dict) -> dict:
    before, after = r["original_before"]["accuracy"], r["original_after"]["accuracy"]
    return {"method": name, "flags": " ".join(flags), "a_test_accuracy_before": before,
            "a_test_accuracy_after": after, "forgetting_points": round(100 * (before - after), 2),
            "b_test_accuracy": r["test_after"]["accuracy"], "b_dev_accuracy": r["dev_best_accuracy"],
            "train_seconds": round(r["train_seconds"], 1)}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0, out = time.time(), Path(args.out)
    senti = {split: data_dir() / "sentiment/chnsenticorp" / f"{split}.tsv" for split in ("train", "dev", "test")}
    domain = write_domain_task(data_dir(), out / "data", args.domain_train, args.domain_eval)
    runs = out / "runs"
    settings = argparse.Namespace(**{**vars(args), "task": "classify"})  # what finetune_run reads
    first = finetune_run(argparse.Namespace(**{**vars(settings), "max_steps": args.steps_a}), senti, runs / "a_senti",
                         Path(args.init), [], args.seed)
    a_ckpt = runs / "a_senti" / "best"
    keep = ["--original-val", str(senti["test"])]
    rows = []
    for name, flags in variants(args, senti["train"]):
        r = finetune_run(settings, domain, runs / ("b_" + name.replace(" + ", "_").replace(" ", "_")), a_ckpt,
                         keep + flags, args.seed)
        rows.append(row(name, flags, r))
    results = {"command": " ".join(["python -m bench.continual", *(argv if argv is not None else sys.argv[1:])]),
               "init": args.init, "task_a": "ChnSentiCorp sentiment (2 labels)",
               "task_b": f"sentence domain (3 labels: {', '.join(f'{k} = {v}' for k, v in DOMAINS.items())}); "
                         f"{args.domain_train} train, {args.domain_eval} dev, {args.domain_eval} test per domain",
               "steps_a": args.steps_a, "steps_b": args.max_steps, "batch_size": args.batch_size, "lr": args.lr,
               "a_after_a": {"test_accuracy": first["test_after"]["accuracy"],
                             "dev_accuracy": first["dev_best_accuracy"]},
               "rows": rows, "wall_seconds": round(time.time() - t0, 1)}
    write_json_results(results, out, args.results)
    print(f"task A after A: test accuracy {100 * first['test_after']['accuracy']:.2f}")
    for r in rows:
        print(f"{r['method']:<28} A test {100 * r['a_test_accuracy_after']:.2f} (forgetting "
              f"{r['forgetting_points']:+.2f})  B test {100 * r['b_test_accuracy']:.2f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
