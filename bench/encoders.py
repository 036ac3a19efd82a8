"""Downsampled (hourglass) encoders against the plain one, on the same pretraining and fine-tuning budget.

An encoder with ``--shorten 2`` runs its middle layers over pairs of characters (`charformer.hourglass`: mean
pooling, or GBST, Tay et al. 2021) and lengthens the result back to one vector per character for tagging. This
script puts such encoders beside the plain one of the same depth and width: masked-LM accuracy after
pretraining, CTB6 word-segmentation F1, ChnSentiCorp accuracy, the time of a training step and the speed of
segmentation.

    python -m bench.encoders --run plain=out/enc/plain --run pool=out/enc/pool --run gbst=out/enc/gbst \\
        --speed out/cws_encoders.json --out bench/results/encoders.json

Each ``--run NAME=PREFIX`` names the three run folders of one encoder, all made with the same commands apart
from the model flags: ``PREFIX_mlm`` (``pretrain.py --objective mlm``), ``PREFIX_ctb6`` (``finetune.py --task
cws``) and ``PREFIX_senti`` (``finetune.py --task classify``). The first run is the reference of the ratios.

* training step: one masked-LM step (forward over the whole batch, the head over the masked positions,
  backward, AdamW) at the pretraining batch (``--batch-size`` x the body's block size), random weights of each
  body's shape; the encoders in turn, ``--steps`` steps each, for ``--rounds`` rounds, one thread; each round's
  time is divided by the reference's in the same round and the median ratio reported;
* segmentation speed: the rows labelled NAME in a `bench.cws_peers` JSON (``--speed``), which times the
  fine-tuned segmenters (``--ckpt NAME=PREFIX_ctb6``) beside THULAC in alternating rounds;
* quality: read from each run's ``results.json`` (test metrics after fine-tuning, seconds per epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from charformer.checkpoint import read_meta
from charformer.data import IGNORE_INDEX
from charformer.model import CharTransformer
from charformer.objectives import mask_for_mlm


def parse_run(text: str) -> tuple[str, Path]:
    name, sep, prefix = text.partition("=")
    if not sep or not name or not prefix:
        raise argparse.ArgumentTypeError(f"--run wants NAME=PREFIX, got {text!r}")
    return name, Path(prefix)


def load_results(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"{path}: no results.json (has the run finished?)")
    return json.loads(path.read_text())


def mlm_step(model, opt, ids: torch.Tensor, generator: torch.Generator) -> None:
    x, y = mask_for_mlm(ids, generator, vocab_size=model.cfg.vocab_size)
    select = y != IGNORE_INDEX
    loss = F.cross_entropy(model(x, select=select), y[select])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def step_times(runs: dict[str, Path], batch_size: int, steps: int, rounds: int) -> dict[str, dict]:
    """Median seconds per masked-LM step of each body's shape, and the median per-round ratio to the first."""
    models, gen = {}, torch.Generator().manual_seed(0)
    for name, prefix in runs.items():
        _, cfg, _ = read_meta(Path(f"{prefix}_mlm") / "best")
        torch.manual_seed(0)
        model = CharTransformer(cfg)
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    first = next(iter(models.values()))[0].cfg
    ids = torch.randint(8, first.vocab_size, (batch_size, first.block_size), generator=gen)
    for model, opt in models.values():  # warm-up: allocations, the optimizer state
        for _ in range(2):
            mlm_step(model, opt, ids, gen)
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, (model, opt) in models.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                mlm_step(model, opt, ids, gen)
            times[name].append((time.perf_counter() - t0) / steps)
    ref = next(iter(times.values()))
    return {name: {"seconds_per_step": statistics.median(t),
                   "speedup_vs_first": statistics.median(r / s for r, s in zip(ref, t)), "rounds": t}
            for name, t in times.items()}


def speed_rows(path: Path | None, names) -> dict[str, list[dict]]:
    if path is None:
        return {}
    rows = json.loads(path.read_text())["rows"]
    return {n: [{k: r[k] for k in ("dtype", "batch_size", "chars_per_s", "vs_thulac", "f1")}
                for r in rows if r.get("label") == n] for n in names}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=parse_run, action="append", required=True, help="NAME=PREFIX (repeat)")
    p.add_argument("--speed", type=Path, default=None, help="a bench.cws_peers JSON with rows labelled NAME")
    p.add_argument("--batch-size", type=int, default=32, help="training step: sequences per batch")
    p.add_argument("--steps", type=int, default=5, help="training step: steps per round")
    p.add_argument("--rounds", type=int, default=7, help="training step: rounds of all encoders in turn")
    p.add_argument("--out", type=Path, default=Path("out/encoders.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    runs = dict(args.run)
    steps = step_times(runs, args.batch_size, args.steps, args.rounds)
    speed = speed_rows(args.speed, runs)
    rows = {}
    for name, prefix in runs.items():
        mlm = load_results(Path(f"{prefix}_mlm") / "results.json")
        cws = load_results(Path(f"{prefix}_ctb6") / "results.json")
        senti = load_results(Path(f"{prefix}_senti") / "results.json")
        _, cfg, _ = read_meta(Path(f"{prefix}_mlm") / "best")
        rows[name] = {
            "model": {k: getattr(cfg, k) for k in ("n_layers", "d_model", "shorten", "shorten_layers",
                                                   "shorten_pool", "shorten_upsample")},
            "params": mlm["params"], "mlm_steps": mlm["steps"], "mlm_accuracy": mlm["val_mlm_accuracy"],
            "ctb6_test": {k: cws["test_after"][k] for k in ("f1", "precision", "recall", "oov_recall")},
            "ctb6_seconds_per_epoch": cws["seconds_per_epoch"], "ctb6_epochs": cws["epochs"],
            "senti_test_accuracy": senti["test_after"]["accuracy"], "senti_dev_accuracy": senti["dev_best_accuracy"],
            "senti_seconds_per_epoch": senti["seconds_per_epoch"], "senti_epochs": senti["epochs"],
            "train_step": steps[name], "segment_speed": speed.get(name, []),
        }
        r = rows[name]
        print(f"{name:>8}: MLM acc {r['mlm_accuracy']:.3f}  CTB6 F1 {100 * r['ctb6_test']['f1']:.2f}  "
              f"ChnSentiCorp {100 * r['senti_test_accuracy']:.2f}  step {1000 * steps[name]['seconds_per_step']:.0f} ms "
              f"({steps[name]['speedup_vs_first']:.2f}x)")
    meta = {"command": "python -m bench.encoders " + shlex.join(sys.argv[1:] if argv is None else argv),
            "torch": torch.__version__, "threads": 1, "load_average": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
