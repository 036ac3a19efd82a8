"""Fine-tune a pretrained character model: word segmentation (cws), named-entity recognition (ner),
classification, or continued language-model training on new text (lm); fully or with a parameter-efficient
method.

    python finetune.py --task cws --train ctb6/train.txt --dev ctb6/dev.txt --test ctb6/test.txt \\
        --init out/zh_mlm --out out/ctb6_cws --epochs 3
    python finetune.py --task cws ... --init out/zh_mlm --out out/ctb6_cws_lora --method lora --lora-r 8
    python finetune.py --task ner --train resume/train.char.bmes --dev resume/dev.char.bmes \\
        --test resume/test.char.bmes --init scratch --n-layers 4 --n-heads 4 --d-model 192 --block-size 128 --crf
    python finetune.py --task classify --train chnsenticorp/train.tsv --dev chnsenticorp/dev.tsv \\
        --test chnsenticorp/test.tsv --init out/mlm --out out/senti --max-steps 2000 --method adapter
    python finetune.py --task classify ... --init out/mlm --out out/senti_cloze --train-examples 64 \\
        --method cloze --pattern '{text}总之很[MASK]。' --verbalizers labels.tsv --ema 0.99 --adversarial fgm
    python finetune.py --task lm --init out/xiyouji_lm --train new.txt --dev new_dev.txt --test new_test.txt \\
        --original-val xiyouji_val.txt --rehearsal-data xiyouji_train.txt --rehearsal-share 0.25 --out out/lm_new

Tasks. cws, ner and classify put a task head on an encoder, taken from a pretrained checkpoint (--init DIR: its
architecture and vocabulary; characters it never saw read as [UNK]) or built with random weights (--init
scratch: the architecture from the model options, default bidirectional; the vocabulary from the training
file); formats and their errors: charformer.tasks.readers. Segmentation and NER tag characters (BMES / BIO /
BIOES, decoded with Viterbi kept to valid tag sequences, optionally with a CRF); sentences longer than a block
are read in overlapping windows. lm continues training a causal checkpoint from pretrain.py on new text, with
its vocabulary, printing a sample at each evaluation; --original-val measures forgetting, --rehearsal-data mixes
the original corpus into every batch (charformer.tasks.jobs).

Methods (--method, charformer/peft): full trains every weight (--freeze embeddings|bottom:N keeps part fixed);
freeze trains the head alone (--freeze body means the same; for lm the head is the output layer, tied to the
input embedding); lora, adapter, prefix and adalora freeze the body and train small added modules, with the
options --lora-*, --adapter-*, --prefix-*, --adalora-*. Training: the shared loop (charformer.train.fit):
AdamW, warmup then decay, early stopping on the dev metric (--patience), the body at --lr and a task head at
--lr x --head-lr-scale. Length: --max-steps N, or --epochs N (N x training pieces / batch size, rounded up;
default 3 epochs); unless given, --warmup-steps is 10% of the steps and --eval-interval one epoch.

Toolbox (charformer/finetuning, each method in its own module with its paper): --adversarial fgm|pgd
(--adv-eps, --adv-steps) perturbs the character embeddings; --rdrop ALPHA penalises disagreement between two
dropout passes; --ema DECAY or --average-last N evaluate and save averaged weights; --augment NAME[,NAME] adds
label-preserving new examples to the training set; --ewc LAMBDA --ewc-data FILE holds the weights that the
earlier task's (or pretraining's) likelihood depends on; --method cloze --pattern TEXT --verbalizers FILE
classifies through the masked-LM head (PET), for few-shot training. Continued pretraining on in-domain text
before fine-tuning: pretrain.py --init DIR. Zero-shot: python -m charformer.zeroshot.

Outputs in OUT: best/ (the best dev score), last/ (for --resume: the whole model, optimizer, RNGs and AdaLoRA's
state), metrics.jsonl, curves.png, results.json. With --method full, best/ is a complete checkpoint; with any
other method it is an adapter (adapter.json + adapter.safetensors: the trained tensors and the head, bound to
the --init checkpoint by a fingerprint of its weights, and recording its path). Either way the prediction tools
take OUT: `python -m charformer.segment --ckpt OUT` (.tag, .classify; .sample for lm) load the base named in
the adapter and put the adapter on it; `--base DIR` names the base when it has moved.

OUT/results.json: test_before and test_after (the test set scored with the model as loaded and after
fine-tuning) -- cws: f1, precision, recall, oov_recall, iv_recall (SIGHAN word scoring); ner: f1, precision,
recall and per_type; classify: accuracy, macro_f1, per_class_f1, confusion; lm: loss (nats/char), bpc, chars,
and also dev_before/after, original_before/after, original_bpc_before/after, sample_before/after, coverage.
Then method (cloze for --method cloze), method_options, toolbox (every toolbox option), augmented_examples,
trainable_params, total_params, trainable_share, adapter_bytes (what best/ takes on disk: for full the whole
checkpoint), dev_best_<metric>, steps, epochs, train_seconds, seconds_per_epoch,
peak_rss_mb (the peak resident memory of this process, from getrusage), wall_seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from dataclasses import replace
from pathlib import Path

import torch

from charformer.checkpoint import load_trainer_state, read_meta
from charformer.cli import add_dataclass_options, build_dataclass, parse_with_config
from charformer.distributed import barrier, init_distributed, quiet_unless_main, shutdown
from charformer.errors import CharformerError, run_cli
from charformer.finetuning.toolbox import Toolbox, ToolboxConfig, cloze_job, take_cloze
from charformer.model import ModelConfig
from charformer.peft import describe_trainable
from charformer.peft.training import MethodConfig, Tuning, check_options_apply
from charformer.tasks.jobs import LMConfig, TaskConfig, lm_job, task_job
from charformer.tasks.model import TASKS, freeze
from charformer.train import TrainConfig, clear_run, fit, pick_device

ALL_TASKS = (*TASKS, "lm")
DEFAULT_EPOCHS = 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML file of options (flags given here override it)")
    p.add_argument("--task", default=None, choices=ALL_TASKS, help="cws (word segmentation), ner, classify, or lm "
                   "(continued language-model training)")
    p.add_argument("--train", default=None, help="training file")
    p.add_argument("--dev", default=None, help="development file (early stopping, best checkpoint)")
    p.add_argument("--test", default=None, help="test file (scored before and after fine-tuning; optional for lm)")
    p.add_argument("--init", default=None, help="pretrained checkpoint directory (pretrain.py --out), or 'scratch'")
    p.add_argument("--out", default=None, help="output directory (best/, last/, metrics.jsonl, curves.png, results.json)")
    p.add_argument("--epochs", type=float, default=None, help=f"training length in epochs (default {DEFAULT_EPOCHS}; "
                   "or --max-steps)")
    p.add_argument("--train-examples", type=int, default=None, help="train on a random subset of this many training "
                   "sentences or texts, drawn with --seed (label-efficiency curves; not for lm)")
    p.add_argument("--resume", action="store_true", default=None, help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an earlier run in --out (default: refuse)")
    add_dataclass_options(p, MethodConfig, group="fine-tuning method")
    add_dataclass_options(p, ToolboxConfig, group="fine-tuning toolbox (charformer/finetuning; --method cloze: "
                                                   "classification through the masked-LM head)")
    add_dataclass_options(p, TaskConfig, group="task (cws, ner, classify)")
    add_dataclass_options(p, LMConfig, group="language model (--task lm)")
    add_dataclass_options(p, ModelConfig, skip=("vocab_size",), group="model (--init scratch; with a checkpoint only "
                                                                          "dropout and attn_impl may change)")
    add_dataclass_options(p, TrainConfig, group="training")
    return p


def set_training_length(cfg: TrainConfig, args, n_train: int, world_size: int = 1) -> TrainConfig:
    """`cfg` with --epochs turned into steps (an epoch: `n_train` pieces, `cfg.batch_size` x `world_size` ranks x
    `cfg.grad_accum` per step), and the fine-tuning defaults: warmup 10% of the steps, evaluation once per epoch
    (unless given)."""
    if args.max_steps is not None and args.epochs is not None:
        raise CharformerError("give either --max-steps or --epochs, not both")
    steps_per_epoch = math.ceil(n_train / (cfg.batch_size * world_size * cfg.grad_accum))
    if args.max_steps is None:
        epochs = DEFAULT_EPOCHS if args.epochs is None else args.epochs
        if epochs <= 0:
            raise CharformerError(f"--epochs must be positive, got {epochs}")
        cfg = replace(cfg, max_steps=max(1, math.ceil(epochs * steps_per_epoch)))
    if args.warmup_steps is None:
        cfg = replace(cfg, warmup_steps=max(1, cfg.max_steps // 10))
    if args.eval_interval is None:
        cfg = replace(cfg, eval_interval=min(steps_per_epoch, cfg.max_steps))
    return cfg


def choose_method(args, method_cfg: MethodConfig, task_cfg: TaskConfig) -> MethodConfig:
    """Reconcile --method with --freeze: --freeze body is --method freeze; other --freeze values refine full."""
    method = method_cfg.method
    if task_cfg.freeze == "body":
        if method not in ("full", "freeze"):
            raise CharformerError(f"--freeze body means --method freeze; it cannot go with --method {method}")
        method = "freeze"
    elif task_cfg.freeze != "none" and (method != "full" or args.task == "lm"):
        raise CharformerError(f"--freeze {task_cfg.freeze} refines --method full for cws, ner and classify")
    if method != "full" and args.init == "scratch":
        raise CharformerError(f"--method {method} adapts a pretrained base and saves an adapter bound to it: give "
                              "--init DIR, or use --method full from scratch")
    check_options_apply(args, method)
    return replace(method_cfg, method=method)


def _headline(task: str, scores: dict) -> str:
    keys = {"cws": ("f1", "precision", "recall", "oov_recall", "iv_recall"), "ner": ("f1", "precision", "recall"),
            "classify": ("accuracy", "macro_f1"), "lm": ("bpc", "loss")}[task]
    return "  ".join(f"{k} {scores[k]:.4f}" if scores[k] is not None else f"{k} -" for k in keys)


def print_report(task: str, results: dict) -> None:
    names = [n for n in ("dev", "test", "original") if f"{n}_after" in results] if task == "lm" else ["test"]
    for name in names:
        print(f"\n{name} before fine-tuning: {_headline(task, results[f'{name}_before'])}")
        print(f"{name} after fine-tuning:  {_headline(task, results[f'{name}_after'])}")
    after = results.get("test_after")
    if task == "lm":
        if "original_bpc_after" in results:
            change = results["original_bpc_after"] - results["original_bpc_before"]
            print(f"forgetting: {change:+.4f} bits/char on the original validation text")
        print(f"sample after fine-tuning:\n{results['sample_after']}")
    elif task == "ner":
        for span_type, s in after["per_type"].items():
            print(f"  {span_type or '(untyped)':<12} f1 {s['f1']:.4f}  precision {s['precision']:.4f}  "
                  f"recall {s['recall']:.4f}  gold {s['gold']}")
    elif task == "classify":
        labels, matrix = after["confusion"]["labels"], after["confusion"]["matrix"]
        width = max(len(str(x)) for x in [*labels, *(n for row in matrix for n in row)]) + 2
        print("  confusion (rows gold, columns predicted):")
        print(" " * (width + 2) + "".join(f"{label:>{width}}" for label in labels))
        for label, row in zip(labels, matrix):
            print(f"  {label:<{width}}" + "".join(f"{n:>{width}}" for n in row))
    print(f"method {results['method']}: trainable parameters {results['trainable_params']:,} of "
          f"{results['total_params']:,} ({results['trainable_share']:.2%}); best/ "
          f"{results['adapter_bytes'] / 1024:,.0f} KiB; {results['steps']} steps ({results['epochs']:.2f} epochs) in {results['wall_seconds']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    t_start = time.time()
    args = parse_with_config(build_parser(), argv)
    needed = ("task", "train", "dev", "init", "out") + (() if args.task == "lm" else ("test",))
    missing = [f"--{name}" for name in needed if not getattr(args, name)]
    if missing:
        raise CharformerError(f"missing {', '.join(missing)} (on the command line or in the --config file)")
    if args.task not in ALL_TASKS:
        raise CharformerError(f"--task must be one of {ALL_TASKS}, got {args.task!r}")
    out, resume = Path(args.out), bool(args.resume)
    if not resume and not args.overwrite and (out / "last").exists():
        raise CharformerError(f"{out} already holds a run: pass --resume to continue it, --overwrite to replace it, "
                              "or choose another --out")
    cloze = take_cloze(args)  # the toolbox (charformer.finetuning): its options, then its changes below
    toolbox_cfg = build_dataclass(ToolboxConfig, args)
    task_cfg = build_dataclass(TaskConfig, args)
    train_cfg = build_dataclass(TrainConfig, args)
    method_cfg = choose_method(args, build_dataclass(MethodConfig, args), task_cfg)
    if train_cfg.fsdp and method_cfg.method != "full":
        raise CharformerError(f"--fsdp is for --method full: --method {method_cfg.method} trains a small share of the "
                              "weights, which DDP (the default under torchrun) handles without sharding")
    device = pick_device(train_cfg.device)
    dist_info = init_distributed(device.type)  # under torchrun: one process per device; else a no-op
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
    quiet_unless_main(dist_info)
    # The objective draws global batches (per-rank batch x ranks); fit gives each rank its slice.
    job_cfg = replace(train_cfg, batch_size=train_cfg.batch_size * dist_info.world_size)
    if args.task == "lm":
        lm_cfg = build_dataclass(LMConfig, args)
        if args.train_examples is not None or (args.rehearsal_share is not None and not lm_cfg.rehearsal_data) \
                or toolbox_cfg.augment:
            raise CharformerError("--train-examples and --augment are for cws, ner and classify; --rehearsal-share "
                                  "needs --rehearsal-data")
        job = lm_job(args, lm_cfg, job_cfg, task_cfg.eval_batch_size)
    else:
        if args.train_examples is not None and args.train_examples < 1:
            raise CharformerError(f"--train-examples must be >= 1, got {args.train_examples}")
        job = task_job(args, task_cfg, job_cfg, args.train_examples)
        if cloze:
            job = cloze_job(job, toolbox_cfg, args.task)
    train_cfg = set_training_length(train_cfg, args, job.n_train, dist_info.world_size)
    global_batch = job_cfg.batch_size * train_cfg.grad_accum

    job.model.to(device)
    # Scored before the method goes on, so that "before" is the base model for every method (a prefix changes
    # the outputs from the start; the task head is untrained either way).
    before = job.score(job.model) if dist_info.is_main else {}  # rank 0 alone scores and reports
    tuning = Tuning(job.body, method_cfg, total_steps=train_cfg.max_steps, head_params=job.head_params)
    if task_cfg.freeze not in ("none", "body"):  # part of the body kept fixed under full (see choose_method)
        freeze(job.model, task_cfg.freeze)
    toolbox = Toolbox(job, toolbox_cfg, batch_size=job_cfg.batch_size, seed=train_cfg.seed, fsdp=train_cfg.fsdp)
    body_cfg = job.body.cfg
    print(f"model: {args.init} ({body_cfg.n_layers} layers, d_model {body_cfg.d_model}, block {body_cfg.block_size}, "
          f"{'causal' if body_cfg.causal else 'bidirectional'}), task {args.task}, method {tuning.method} "
          f"{tuning.settings or ''}; {describe_trainable(job.model)}; {train_cfg.max_steps} steps of "
          f"{train_cfg.batch_size} x {train_cfg.grad_accum}; device {device}")
    print(f"effective batch: {train_cfg.batch_size} per rank x {dist_info.world_size} ranks x {train_cfg.grad_accum} "
          f"accumulation = {global_batch}")
    if resume:
        tuning.check_resume(read_meta(out / "last")[0], out / "last")
        tuning.restore(load_trainer_state(out / "last")[1])
        toolbox.restore(load_trainer_state(out / "last")[1])

    def save(path, trainer_state, trainer_tensors, weights):
        if trainer_state is None and tuning.saves_adapter:  # best/ of a parameter-efficient run
            tuning.save(path, job.body, heads=job.heads, extra=job.description, base_path=job.base_dir)
        else:
            tensors = None if trainer_state is None else {**trainer_tensors, **tuning.state_tensors()}
            job.save_full(path, tuning.record, trainer_state, tensors, weights)

    if args.overwrite and not resume and dist_info.is_main:
        clear_run(out)  # only now: a run with bad input must leave the old one untouched
    out.mkdir(parents=True, exist_ok=True)
    barrier(dist_info)
    summary = fit(job.model, toolbox.objective(tuning.objective(job.objective)), train_cfg, out,
                  toolbox.wrap_save(save), resume=resume, lr_scale=job.lr_scale,
                  desc=f"finetune {args.task} {tuning.method} {out.name}",
                  after_step=toolbox.after_step(tuning.after_step), dist_info=dist_info)
    shutdown(dist_info)
    if not dist_info.is_main:
        return 0
    best = job.load_best(out / "best", device)
    after = job.score(best)
    metric = job.objective.metric
    epochs = summary["steps"] * global_batch / job.n_train
    results = {
        "task": args.task,
        "init": args.init,
        "files": {"train": args.train, "dev": args.dev, "test": args.test},
        **{f"{name}_{when}": scores[name] for name in before
           for when, scores in (("before", before), ("after", after))},
        f"dev_best_{metric}": summary[f"best_{metric}"],
        **tuning.summary(job.model, best=out / "best", best_model=best),
        **({"method": "cloze"} if cloze else {}),
        **toolbox.summary(),
        "freeze": task_cfg.freeze,
        "wall_seconds": round(time.time() - t_start, 1),
        "train_seconds": summary["train_seconds"],
        "seconds_per_epoch": summary["train_seconds"] / epochs,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux reports KiB
        "steps": summary["steps"],
        "epochs": epochs,
        "stopped_early": summary["stopped_early"],
        "world_size": dist_info.world_size,
        "effective_batch": global_batch,
        **job.results,
        "model": body_cfg.to_dict(),
        "device": str(device),
        "torch": torch.__version__,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print_report(args.task, results)
    print(f"best: {out / 'best'}   curves: {out / 'curves.png'}   results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
