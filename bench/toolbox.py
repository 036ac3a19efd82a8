"""Few-shot sentiment on ChnSentiCorp: a classification head against cloze (PET) on the same N labelled reviews,
from a masked LM pretrained on the reviews' own text (task-adaptive pretraining), with the zero-shot point.

    python -m bench.toolbox                        # sized for a shared CPU: minutes
    python -m bench.toolbox --shots 16,64,256 --seeds 1,2,3 --pretrain-steps 3000 --n-layers 4 --d-model 256
    python -m bench.toolbox --init out/zh_mlm/best --pretrain-steps 0   # a given masked LM, no review pretraining
    charformer bench toolbox --results bench/results/toolbox_fewshot.json

Steps, each a call of the project's own `main` (pretrain.py, finetune.py; nothing of their logic repeated here):

1. the review texts of the training split, labels dropped, one per line (data/reviews.txt; the dev split's
   texts for validation): the unlabelled in-domain text of Gururangan et al. 2020's task-adaptive pretraining;
2. pretrain.py --objective mlm --packing lines on it, from random weights (--init DIR to continue a given
   masked LM on it instead);
3. for each N in --shots and seed in --seeds: finetune.py --train-examples N --seed S, once with the default
   head (--method full) and once with --method cloze --pattern P --verbalizers (1 -> 好, 0 -> 差), same steps,
   batch and learning rate. The cloze run's test_before is the zero-shot accuracy of the pattern.

Evaluation on the dev split happens once, at the end (a few-shot learner has no large dev set to select on), so
the checkpoint scored is the last one. Outputs in --out (out/ is not versioned): runs/, data/, results.json
(every run's test accuracy, the mean per N and method, the command); --results FILE copies results.json there
(e.g. bench/results/).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import finetune
import pretrain
from bench import data_dir, write_json_results
from charformer.errors import CharformerError, run_cli
from charformer.tasks.readers import read_labeled

VERBALIZERS = "0\t差\n1\t好\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(data_dir() / "sentiment" / "chnsenticorp"), help="folder of the "
                   "ChnSentiCorp train.tsv, dev.tsv and test.tsv (default: $CHARFORMER_DATA/sentiment/chnsenticorp, "
                   "or shared/data beside the repository)")
    p.add_argument("--out", default="out/toolbox", help="output folder: runs/, data/, results.json (default: "
                   "%(default)s)")
    p.add_argument("--results", default="", help="also copy results.json to this file, e.g. bench/results/"
                   "toolbox_fewshot.json (default: no copy)")
    p.add_argument("--init", default=None, help="a masked LM to continue pretraining on the reviews (default: random "
                   "weights)")
    p.add_argument("--pretrain-steps", type=int, default=600, help="masked-LM pretraining steps (default: "
                   "%(default)s); 0 fine-tunes --init as it is, without pretraining on the reviews")
    p.add_argument("--n-layers", type=int, default=2, help="layers of the model pretrained from random weights "
                   "(default: %(default)s)")
    p.add_argument("--n-heads", type=int, default=4, help="attention heads of that model (default: %(default)s)")
    p.add_argument("--d-model", type=int, default=96, help="width of that model (default: %(default)s)")
    p.add_argument("--block-size", type=int, default=128, help="characters per block of that model (default: "
                   "%(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step, pretraining and fine-tuning "
                   "(fine-tuning: at most the number of shots; default: %(default)s)")
    p.add_argument("--shots", default="64", help="comma-separated numbers of labelled reviews")
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (each draws its own subset)")
    p.add_argument("--finetune-steps", type=int, default=60, help="fine-tuning steps of every run (default: "
                   "%(default)s)")
    p.add_argument("--finetune-lr", type=float, default=5e-4, help="fine-tuning learning rate (default: "
                   "%(default)s)")
    p.add_argument("--pattern", default="{text}总之很[MASK]。", help="the cloze runs' pattern, one {text} and one "
                   "[MASK] (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: %(default)s)")
    return p


def write_reviews(src: Path, dst: Path) -> None:
    dst.write_text("".join(d.text + "\n" for d in read_labeled(src)), encoding="utf-8")


def pretrain_on_reviews(args, out: Path, reviews: Path, dev_reviews: Path) -> tuple[Path, dict]:
    """Step 2: the masked LM the few-shot runs start from, and what its pretraining measured. With
    --pretrain-steps 0, --init itself (no pretraining on the reviews)."""
    if args.pretrain_steps == 0:
        if not args.init:
            raise CharformerError("--pretrain-steps 0 needs --init (the masked LM to fine-tune as it is)")
        return Path(args.init), {"init": args.init, "steps": 0}
    mlm = out / "runs" / "mlm"
    shape = ["--n-layers", str(args.n_layers), "--n-heads", str(args.n_heads), "--d-model", str(args.d_model),
             "--block-size", str(args.block_size)]
    pretrain.main(["--data", str(reviews), "--val", str(dev_reviews), "--objective", "mlm", "--packing", "lines",
                   "--out", str(mlm), "--overwrite", "--max-steps", str(args.pretrain_steps), "--batch-size",
                   str(args.batch_size), "--eval-interval", str(args.pretrain_steps), "--eval-batches", "10",
                   "--device", args.device, *(["--init", args.init] if args.init else shape)])
    pretrained = json.loads((mlm / "results.json").read_text())
    return mlm, {k: pretrained[k] for k in ("val_loss", "val_mlm_accuracy", "steps", "params", "train_seconds")}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.time()
    out, data = Path(args.out), Path(args.data)
    (out / "data").mkdir(parents=True, exist_ok=True)
    reviews, dev_reviews = out / "data" / "reviews.txt", out / "data" / "dev_reviews.txt"
    write_reviews(data / "train.tsv", reviews)
    write_reviews(data / "dev.tsv", dev_reviews)
    (out / "data" / "verbalizers.tsv").write_text(VERBALIZERS, encoding="utf-8")
    mlm, pretrained = pretrain_on_reviews(args, out, reviews, dev_reviews)
    runs = []
    for shots in [int(s) for s in args.shots.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for method in ("head", "cloze"):
                run = out / "runs" / f"{method}_{shots}_{seed}"
                extra = ["--method", "cloze", "--pattern", args.pattern, "--verbalizers",
                         str(out / "data" / "verbalizers.tsv")] if method == "cloze" else []
                finetune.main(["--task", "classify", "--init", str(mlm), "--train", str(data / "train.tsv"),
                               "--dev", str(data / "dev.tsv"), "--test", str(data / "test.tsv"), "--out", str(run),
                               "--overwrite", "--train-examples", str(shots), "--seed", str(seed), "--max-steps",
                               str(args.finetune_steps), "--eval-interval", str(args.finetune_steps), "--batch-size",
                               str(min(args.batch_size, shots)), "--lr", str(args.finetune_lr), "--device",
                               args.device, *extra])
                r = json.loads((run / "results.json").read_text())
                runs.append({"method": method, "shots": shots, "seed": seed,
                             "test_accuracy_before": r["test_before"]["accuracy"],
                             "test_accuracy": r["test_after"]["accuracy"], "dev_accuracy": r["dev_best_accuracy"],
                             "train_seconds": r["train_seconds"]})
    summary = {}
    for shots in sorted({r["shots"] for r in runs}):
        for method in ("head", "cloze"):
            acc = [r["test_accuracy"] for r in runs if r["shots"] == shots and r["method"] == method]
            summary[f"{method}_{shots}"] = {"mean_test_accuracy": statistics.mean(acc),
                                            "min": min(acc), "max": max(acc), "runs": len(acc)}
    zero = [r["test_accuracy_before"] for r in runs if r["method"] == "cloze"]
    summary["zero_shot_cloze"] = {"test_accuracy": zero[0]}  # the same pretrained model and pattern in every run
    results = {"command": " ".join(["python -m bench.toolbox", *(argv if argv is not None else sys.argv[1:])]),
               "pretrained": pretrained,
               "pattern": args.pattern, "verbalizers": {"0": "差", "1": "好"}, "summary": summary, "runs": runs,
               "wall_seconds": round(time.time() - t0, 1)}
    write_json_results(results, out, args.results)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    run_cli(main)
