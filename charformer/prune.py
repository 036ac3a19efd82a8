"""Prune a fine-tuned tagger (segmentation or NER) for deployment: drop whole transformer layers and attention
heads by measured importance, fine-tune briefly to recover, and report size, speed and F1 before and after.

    python -m charformer.prune --ckpt out/ctb6_cws --train $D/train.txt --dev $D/dev.txt --test $D/test.txt \\
        --drop-layers 1 --drop-heads 4 --recover-steps 300 --out out/ctb6_cws_pruned

Layers first: a layer's importance is what the dev F1 loses when that layer is skipped (the block removed, so
its residual branch adds nothing and the stream passes straight on), on the first --importance-sentences dev
sentences. The --drop-layers least important layers are removed at once. This is the layer-level form of the
ablation that Michel et al. (2019, "Are Sixteen Heads Really Better than One?") apply to attention heads, and
of the layer dropping studied by Fan et al. (2020, LayerDrop) and Sajjad et al. (2023).

Then heads, in the layers that remain: a head's importance is Michel et al.'s expected absolute gradient of
the loss with respect to a gate on its output, over the same dev sentences (`charformer.prune_heads`); the
--drop-heads least important heads (ranked across layers after normalising each layer's scores; every layer
keeps one) are cut out of the attention projections. Either way the result is an ordinary checkpoint, with a
smaller ``n_layers`` and per-layer head counts (``layer_heads`` in config.json), that every tool loads.

Recovery: the pruned model is fine-tuned for --recover-steps steps on --train (`charformer.train.fit`, the
fine-tuning objective of finetune.py), keeping the best dev checkpoint in OUT/best. With --distill-alpha above
0 it also learns the original model's per-character tag distributions (knowledge distillation,
`charformer.finetuning.distill`): the original is the teacher, the pruned model a student that starts from
the teacher's own layers. With nothing to remove (--drop-layers 0 and no --drop-heads), the same recovery runs
on the original itself: the control that says how much of a pruned model's F1 comes from the extra steps.

Report (stdout and OUT/results.json): the importance measured and what was removed (``dropped_layers``, and
``dropped_heads`` by layer of the model without those layers); for the original, the pruned model before
recovery and after it, the layer count, heads per layer, parameter count, size of model.safetensors, test F1,
and segmentation speed (characters/s of the test sentences through `tag_texts`, prepared as the prediction
tools prepare a model; the median of --repeats runs, the original and the pruned model alternating so that
other load falls on both alike); and the speed-up and F1 change of the pruned model.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import resolve
from .cli import add_dataclass_options, build_dataclass
from .errors import CharformerError, run_cli
from .finetuning.distill import Distill
from .prune_heads import head_importance, heads_to_drop, remove_heads
from .quantize import prepare_for_inference
from .tasks.heads import Tagger
from .tasks.jobs import TaskConfig, read_task_files
from .tasks.checkpoint import load_task_checkpoint, save_task_checkpoint
from .tasks.objectives import TaggingObjective
from .tasks.predict import tag_texts
from .tasks.schemes import spans_to_words
from .train import TrainConfig, fit


@dataclass
class PruneConfig:
    drop_layers: int = field(default=1, metadata={"help": "layers to remove (0: none)"})
    drop_heads: int = field(default=0, metadata={"help": "attention heads to remove after the layers (0: none)"})
    importance_sentences: int = field(default=500, metadata={"help": "dev sentences that measure importance"})
    recover_steps: int = field(default=300, metadata={"help": "fine-tuning steps after pruning (0: none)"})
    lr: float = field(default=5e-4, metadata={"help": "recovery learning rate"})
    batch_size: int = field(default=32, metadata={"help": "recovery batch size"})
    eval_batch_size: int = field(default=64, metadata={"help": "windows per forward pass in evaluation and timing"})
    repeats: int = field(default=3, metadata={"help": "timed runs per model (median)"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda"})
    distill_alpha: float = field(default=0.0, metadata={"help": "recovery: weight of T^2 x KL(original || pruned) "
                                                         "(distillation from the original model); 0: gold loss alone"})
    distill_temperature: float = field(default=1.0, metadata={"help": "recovery: distillation temperature T"})

    def __post_init__(self):
        if not 0 <= self.distill_alpha <= 1 or not self.distill_temperature > 0:
            raise ValueError("need 0 <= distill_alpha <= 1 and distill_temperature > 0")


def without_layers(model: Tagger, drop: set[int]) -> Tagger:
    """A copy of `model` without the blocks whose indices are in `drop` (its config's n_layers reduced)."""
    pruned = copy.deepcopy(model)
    body = pruned.body
    body.blocks = nn.ModuleList(block for i, block in enumerate(body.blocks) if i not in drop)
    body.cfg = replace(body.cfg, n_layers=len(body.blocks), layer_heads=[block.attn.n_heads for block in body.blocks])
    return pruned


def objective_for(task: dict, data: dict, vocab, model: Tagger, cfg: PruneConfig) -> TaggingObjective:
    words = ({w for s in data["train"] for w in spans_to_words(s.text, s.spans)} if task["task"] == "cws" else None)
    return TaggingObjective(task, data["train"], data["dev"], vocab, block_size=model.body.cfg.block_size,
                            batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size, train_words=words)


@torch.no_grad()
def layer_importance(model: Tagger, objective: TaggingObjective, sentences: list) -> list[float]:
    """Dev F1 lost (points) when each layer alone is skipped, in layer order."""
    model.eval()
    full = objective.score(model, sentences)["f1"]
    return [round(100 * (full - objective.score(without_layers(model, {i}), sentences)["f1"]), 3)
            for i in range(len(model.body.blocks))]


def prune_layers(model: Tagger, objective: TaggingObjective, dev: list, cfg: PruneConfig) -> tuple[Tagger, dict]:
    """A copy of `model` without its cfg.drop_layers least important layers (`layer_importance` on the `dev`
    sentences), and what was measured and removed."""
    if not cfg.drop_layers:
        return without_layers(model, set()), {"dropped_layers": []}
    importance = layer_importance(model, objective, dev)
    drop = sorted(sorted(range(len(importance)), key=lambda i: importance[i])[: cfg.drop_layers])
    print(f"dev F1 lost when each layer is skipped (points): {importance}; dropping layers {drop}")
    return without_layers(model, set(drop)), {"layer_importance_dev_f1_points": importance, "dropped_layers": drop}


def prune_heads(model: Tagger, task: dict, dev: list, vocab, cfg: PruneConfig) -> dict:
    """Remove the cfg.drop_heads least important heads of `model` in place (importance: `head_importance` over
    every piece of the `dev` sentences, with the training loss). Returns what was measured and removed (layer
    indices of `model`). Raises CharformerError when that many heads cannot go."""
    measure = objective_for(task, {"train": dev, "dev": []}, vocab, model, cfg)  # the dev pieces, as batches
    device = next(model.parameters()).device
    importance = head_importance(model, model.body, lambda b: measure.loss(model, [t.to(device) for t in b])[0],
                                 measure.batches_in_order())
    try:
        drop = heads_to_drop(importance, cfg.drop_heads)
    except ValueError as e:
        raise CharformerError(f"--drop-heads: {e}") from None
    remove_heads(model.body, drop)
    print(f"head importance (mean |dL/d gate|): {[s.tolist() for s in importance]}; dropping heads {drop}")
    return {"head_importance": [[round(float(x), 6) for x in s] for s in importance],
            "dropped_heads": {str(layer): heads for layer, heads in drop.items()}}


def chars_per_second(models: dict[str, Tagger], vocab, task: dict, texts: list[str], cfg: PruneConfig) -> dict:
    """Median characters/s of `tag_texts` over `texts` for each model, the models taking turns."""
    prepared = {name: prepare_for_inference(copy.deepcopy(m), int8=False) for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in prepared}
    with torch.inference_mode():
        for _ in range(cfg.repeats + 1):  # the first round warms up and is not counted
            for name, m in prepared.items():
                started = time.perf_counter()
                tag_texts(m, vocab, texts, batch_size=cfg.eval_batch_size, overlap=task["overlap"])
                times[name].append(time.perf_counter() - started)
    n_chars = sum(map(len, texts))
    return {name: round(n_chars / statistics.median(t[1:])) for name, t in times.items()}


def describe(model: Tagger, path: Path | None, objective: TaggingObjective, test: list) -> dict:
    model.eval()
    with torch.no_grad():
        f1 = objective.score(model, test)["f1"]
    out = {"n_layers": model.body.cfg.n_layers, "layer_heads": [block.attn.n_heads for block in model.body.blocks],
           "parameters": sum(p.numel() for p in model.parameters()), "test_f1": round(100 * f1, 2)}
    if path is not None:
        out["model_bytes"] = (resolve(path) / "model.safetensors").stat().st_size
    return out


class _Checkpoints:
    """The `charformer.train.Checkpointer` of the recovery run: task checkpoints of the pruned model."""

    def __init__(self, model: Tagger, vocab, task: dict, source: str):
        self.model, self.vocab, self.task, self.extra = model, vocab, task, {"pruned_from": source}

    def save_last(self, path, trainer_state, trainer_tensors, weights) -> None:
        save_task_checkpoint(path, self.model, self.vocab, self.task, extra=self.extra, trainer_state=trainer_state,
                             trainer_tensors=trainer_tensors, weights=weights)

    def save_best(self, path, weights) -> None:
        save_task_checkpoint(path, self.model, self.vocab, self.task, extra=self.extra, weights=weights)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, text in (("ckpt", "the fine-tuned tagger (finetune.py --task cws or ner, --method full)"),
                       ("train", "training file (recovery)"), ("dev", "dev file (importance, best checkpoint)"),
                       ("test", "test file (F1 and speed)"), ("out", "output directory")):
        p.add_argument(f"--{name}", required=True, help=text)
    add_dataclass_options(p, PruneConfig)
    args = p.parse_args(argv)
    cfg = build_dataclass(PruneConfig, {k: v for k, v in vars(args).items() if v is not None})
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise CharformerError(f"{out}: not empty; give a new --out directory")
    model, vocab, task = load_task_checkpoint(args.ckpt, cfg.device)
    if task["task"] not in ("cws", "ner"):
        raise CharformerError(f"{args.ckpt}: a {task['task']} model; prune takes a tagger (cws or ner)")
    if task.get("standards"):
        raise CharformerError(f"{args.ckpt}: a multi-criteria segmenter; prune takes a single-standard tagger")
    n_layers = model.body.cfg.n_layers
    if not 0 <= cfg.drop_layers < n_layers:
        raise CharformerError(f"--drop-layers must be between 0 and {n_layers - 1} (the model has {n_layers})")
    if not cfg.drop_layers and not cfg.drop_heads and not cfg.recover_steps:
        # nothing removed but a recovery run is the control: the original fine-tuned as long as a pruned model is
        raise CharformerError("nothing to do: give --drop-layers, --drop-heads or (a control) --recover-steps")
    data = read_task_files(task["task"], TaskConfig(), {"train": args.train, "dev": args.dev, "test": args.test})
    objective = objective_for(task, data, vocab, model, cfg)
    dev = data["dev"][: cfg.importance_sentences]
    results = {"command": " ".join(["python -m charformer.prune", *(sys.argv[1:] if argv is None else argv)]),
               "ckpt": str(args.ckpt), "config": {k.name: getattr(cfg, k.name) for k in fields(cfg)}}

    pruned, measured = prune_layers(model, objective, dev, cfg)
    results.update(measured)
    if cfg.drop_heads:
        results.update(prune_heads(pruned, task, dev, vocab, cfg))
    results["original"] = describe(model, Path(args.ckpt), objective, data["test"])
    results["pruned_before_recovery"] = describe(pruned, None, objective, data["test"])

    out.mkdir(parents=True, exist_ok=True)
    if cfg.recover_steps:
        pruned.train()
        train_cfg = TrainConfig(max_steps=cfg.recover_steps, batch_size=cfg.batch_size, lr=cfg.lr, min_lr=cfg.lr / 10,
                                warmup_steps=min(50, cfg.recover_steps // 10), eval_interval=cfg.recover_steps,
                                log_interval=max(1, cfg.recover_steps // 10), device=cfg.device)
        recovery = objective
        if cfg.distill_alpha:
            recovery = Distill(objective, pruned, copy.deepcopy(model), torch.arange(len(vocab)),
                               alpha=cfg.distill_alpha, temperature=cfg.distill_temperature)
        fit(pruned, recovery, train_cfg, out, _Checkpoints(pruned, vocab, task, str(args.ckpt)), desc="recover")
        pruned = load_task_checkpoint(out / "best", cfg.device)[0]
    else:
        save_task_checkpoint(out / "best", pruned, vocab, task, extra={"pruned_from": str(args.ckpt)})
    results["pruned"] = describe(pruned, out / "best", objective, data["test"])
    speed = chars_per_second({"original": model, "pruned": pruned}, vocab, task, [s.text for s in data["test"]], cfg)
    results["original"]["chars_per_s"], results["pruned"]["chars_per_s"] = speed["original"], speed["pruned"]
    results["speedup"] = round(speed["pruned"] / speed["original"], 3)
    results["test_f1_change_points"] = round(results["pruned"]["test_f1"] - results["original"]["test_f1"], 2)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for name in ("original", "pruned_before_recovery", "pruned"):
        print(f"{name:24s} {json.dumps(results[name])}")
    print(f"speed-up {results['speedup']}x, test F1 change {results['test_f1_change_points']:+.2f} points; "
          f"{out / 'results.json'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
