"""One multi-criteria segmenter against four single-standard ones, at the same size and the same total budget.

    python -m bench.multi_criteria --init out/zh_mlm --steps 2000                # the comparison of issue 15
    python -m bench.multi_criteria --init scratch --steps 2 --finetune-args '--n-layers 1 --d-model 32'

Four corpora follow four segmentation standards (ctb6, udc, weibo, zx, from --data-dir/cws: $CHARFORMER_DATA or
../shared/data). For each, one single-corpus model is fine-tuned from --init for --steps S steps; then ONE
multi-criteria model (`charformer.tasks.criteria`: a learned marker per standard in front of each sentence) is
fine-tuned from the same --init on all four for 4 x S steps: the same architecture, and the same number of
training rows in total. By default (--mix-temperature inf) the multi model draws each standard's rows in equal
shares, so each standard gets as many training rows as its single model (S x batch); what it gains or loses is
the sharing. Every run is finetune.py's own `main` in a forked child (`bench.peft_compare.finetune_run`),
evaluating --evals times on its dev set(s), its best checkpoint kept.

Scored: each corpus's test set (weibo has no test split: its dev set stands in as its test set, and is also the
dev set its models are chosen on, so weibo's figures are optimistic for every model alike; nothing else is held
out), as finetune.py scores it (the model's plain constrained Viterbi, no protection rules, SIGHAN word F1):
- ``single``: each single model's test F1 on its own corpus;
- ``multi``: the multi model's test F1 on each corpus, set to that corpus's standard;
- ``cross``: ``cross[Y][X]`` the F1 on corpus X of the single model trained on Y (X != Y: out of domain, a
  model that never saw X's standard);
- ``means``: the mean test F1 over the corpora of the single models and of the multi model (the issue's bar:
  multi >= single).

Output: JSON (--out-json, default out/multi_criteria.json) with the command, rewritten after every run and every
cross score, so a run stopped half-way keeps what it finished; the runs themselves in --work (default
out/multi_criteria; a run whose results.json exists from the same arguments is reused).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import ROOT, data_dir
from bench.peft_compare import finetune_run
from charformer.errors import CharformerError, run_cli
from charformer.tasks.checkpoint import load_task_checkpoint
from charformer.tasks.metrics import cws_scores
from charformer.tasks.predict import tag_texts
from charformer.tasks.readers import read_cws
from charformer.tasks.schemes import spans_to_words

CORPORA = ("ctb6", "udc", "weibo", "zx")


@dataclass
class BenchArgs:
    init: str  # a pretrained checkpoint directory, or "scratch"
    steps: int  # S: each single model's steps; the multi model gets len(corpora) x S
    evals: int  # evaluations per run (the best dev checkpoint is kept)
    data: Path  # the folder holding cws/<corpus>/{train,dev,test}.txt
    corpora: list[str]
    mix_temperature: str  # passed to finetune.py --mix-temperature
    finetune_args: list[str]  # more finetune.py options for every run
    work: Path
    out_json: Path
    rerun: bool
    part: str  # "all", or only the "single" models, or only the "multi" model


def parse_args(argv: list[str] | None) -> BenchArgs:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", required=True, help="pretrained checkpoint directory (pretrain.py --out), or 'scratch'")
    p.add_argument("--steps", type=int, required=True, help="S: steps of each single-corpus model (the multi model: "
                   "4 x S)")
    p.add_argument("--evals", type=int, default=4, help="evaluations on dev per run (default 4)")
    p.add_argument("--data-dir", default=str(data_dir()), help="folder of the data sets, holding cws/ctb6 ... "
                   "(default: $CHARFORMER_DATA, else ../shared/data)")
    p.add_argument("--corpora", default=",".join(CORPORA), help="comma-separated corpora of DATA/cws (default: all four)")
    p.add_argument("--mix-temperature", default="inf", help="the multi model's finetune.py --mix-temperature "
                   "(default inf: equal shares, each standard as many rows as its single model)")
    p.add_argument("--finetune-args", default="", help="more finetune.py options for every run, e.g. '--batch-size 32 "
                   "--lr 1e-3' (from scratch also the model's size)")
    p.add_argument("--work", default=str(ROOT / "out" / "multi_criteria"), help="folder of the runs")
    p.add_argument("--out-json", default=str(ROOT / "out" / "multi_criteria.json"), help="results file")
    p.add_argument("--rerun", action="store_true", help="run again even where a finished run is found")
    p.add_argument("--part", choices=("all", "single", "multi"), default="all",
                   help="train only the single models or only the multi model (two processes on two cores, sharing "
                   "--work; a last run with the default 'all' reuses both and writes the full JSON)")
    a = p.parse_args(argv)
    corpora = [c.strip() for c in a.corpora.split(",") if c.strip()]
    if a.steps < 1 or a.evals < 1 or len(corpora) < 2:
        raise CharformerError("need --steps >= 1, --evals >= 1 and at least two corpora")
    return BenchArgs(a.init, a.steps, a.evals, Path(a.data_dir), corpora, a.mix_temperature,
                     shlex.split(a.finetune_args), Path(a.work), Path(a.out_json), a.rerun, a.part)


def corpus_files(data: Path, corpus: str) -> dict[str, Path]:
    """train, dev and test files of one corpus; dev stands in for a missing test split (weibo)."""
    folder = data / "cws" / corpus
    files = {"train": folder / "train.txt", "dev": folder / "dev.txt", "test": folder / "test.txt"}
    if not files["test"].exists():
        files["test"] = files["dev"]
    missing = [str(f) for f in files.values() if not f.exists()]
    if missing:
        raise CharformerError(f"missing corpus files: {', '.join(missing)}")
    return files


def common_args(args: BenchArgs, steps: int) -> list[str]:
    return ["--task", "cws", "--init", args.init, "--max-steps", str(steps),
            "--eval-interval", str(max(1, steps // args.evals)), *args.finetune_args]


@torch.no_grad()
def test_f1(ckpt: Path, files: dict[str, Path]) -> float:
    """Word F1 of the single-standard checkpoint `ckpt` on the test file in `files`, scored as finetune.py
    scores it (OOV against that corpus's training words does not enter F1)."""
    model, vocab, task = load_task_checkpoint(ckpt)
    sentences = read_cws(files["test"])
    predicted = tag_texts(model, vocab, [s.text for s in sentences], batch_size=64, overlap=task["overlap"])
    return cws_scores([spans_to_words(s.text, s.spans) for s in sentences],
                      [spans_to_words(s.text, p) for s, p in zip(sentences, predicted)], ())["f1"]


def means(record: dict, corpora: list[str]) -> dict:
    """Mean test F1 over the corpora, of the single models and of the multi model, where all are known."""
    out = {}
    if all(c in record["single"] for c in corpora):
        out["single"] = sum(record["single"][c]["test_f1"] for c in corpora) / len(corpora)
    if record.get("multi"):
        out["multi"] = sum(record["multi"]["test_f1"][c] for c in corpora) / len(corpora)
    if len(out) == 2:
        out["multi_minus_single"] = out["multi"] - out["single"]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = {c: corpus_files(args.data, c) for c in args.corpora}
    record = {
        "command": "python -m bench.multi_criteria " + shlex.join(sys.argv[1:] if argv is None else argv),
        "init": args.init, "steps_single": args.steps, "steps_multi": args.steps * len(args.corpora),
        "test_files": {c: str(f["test"]) + (" (no test split: its dev set)" if f["test"] == f["dev"] else "")
                       for c, f in files.items()},
        "single": {}, "cross": {}, "multi": None, "means": {},
    }

    def save() -> None:
        record["means"] = means(record, args.corpora)
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")

    for corpus in args.corpora if args.part != "multi" else ():
        t0 = time.time()
        r = finetune_run(args.work, f"single_{corpus}", [*common_args(args, args.steps),
                         *(x for split in ("train", "dev", "test") for x in (f"--{split}", str(files[corpus][split])))],
                         args.rerun)
        record["single"][corpus] = {"test_f1": r["test_after"]["f1"], "dev_best_f1": r["dev_best_f1"],
                                    "seconds": round(time.time() - t0, 1)}
        save()
        ckpt = args.work / "runs" / f"single_{corpus}" / "best"
        record["cross"][corpus] = {}
        for other in args.corpora:
            record["cross"][corpus][other] = test_f1(ckpt, files[other])
            save()
    if args.part == "single":
        return 0
    t0 = time.time()
    named = [x for split in ("train", "dev", "test") for c in args.corpora
             for x in (f"--{split}", f"{c}={files[c][split]}")]
    r = finetune_run(args.work, "multi", [*common_args(args, args.steps * len(args.corpora)), *named,
                                          "--mix-temperature", args.mix_temperature], args.rerun)
    record["multi"] = {"test_f1": {c: r["test_after"]["standards"][c]["f1"] for c in args.corpora},
                       "dev_f1": {c: r["dev_after"]["standards"][c]["f1"] for c in args.corpora},
                       "shares": {c: r["standards"][c]["share"] for c in args.corpora},
                       "seconds": round(time.time() - t0, 1)}
    save()
    print(json.dumps(record["means"], indent=2))
    print(f"results: {args.out_json}")
    return 0


if __name__ == "__main__":
    run_cli(main)
