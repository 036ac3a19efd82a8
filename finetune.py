"""Fine-tune a pretrained character model: word segmentation (cws), named-entity recognition (ner),
classification, or continued language-model training on new text (lm); fully or with a parameter-efficient
method.

    python finetune.py --task cws --train ctb6/train.txt --dev ctb6/dev.txt --test ctb6/test.txt \\
        --init out/zh_mlm --out out/ctb6_cws --epochs 3
    python finetune.py --task cws ... --init out/zh_mlm --out out/ctb6_cws_lora --method lora --lora-r 8
    python finetune.py --task cws --train ctb6=ctb6/train.txt --train udc=udc/train.txt --dev ctb6=ctb6/dev.txt \
        --dev udc=udc/dev.txt --test ctb6=ctb6/test.txt --test udc=udc/test.txt --init out/zh_mlm --out out/mc_cws
    python finetune.py --task ner --train resume/train.char.bmes --dev resume/dev.char.bmes \\
        --test resume/test.char.bmes --init scratch --n-layers 4 --n-heads 4 --d-model 192 --block-size 128 --crf
    python finetune.py --task classify --train chnsenticorp/train.tsv --dev chnsenticorp/dev.tsv \\
        --test chnsenticorp/test.tsv --init out/mlm --out out/senti --max-steps 2000 --method adapter
    python finetune.py --task classify --train domain/train.tsv ... --init out/senti --out out/domain_after_senti \\
        --original-val chnsenticorp/test.tsv --ewc 1e4 --ewc-data chnsenticorp/train.tsv
    python finetune.py --task classify ... --init out/mlm --out out/senti_cloze --train-examples 64 \\
        --method cloze --pattern '{text}总之很[MASK]。' --verbalizers labels.tsv --ema 0.99 --adversarial fgm
    python finetune.py --task cws ... --init scratch --n-layers 2 --d-model 128 --out out/ctb6_student \\
        --distill-from out/ctb6_cws --distill-alpha 0.9 --distill-temperature 2
    python finetune.py --task lm --init out/xiyouji_lm --train new.txt --dev new_dev.txt --test new_test.txt \\
        --original-val xiyouji_val.txt --rehearsal-data xiyouji_train.txt --rehearsal-share 0.25 --out out/lm_new

Tasks. cws, ner and classify put a task head on an encoder, taken from a pretrained checkpoint (--init DIR: its
architecture and vocabulary; characters it never saw read as [UNK]) or built with random weights (--init
scratch: the architecture from the model options, default bidirectional; the vocabulary from the training
file); formats and their errors: charformer.tasks.readers. Segmentation and NER tag characters (BMES / BIO /
BIOES, decoded with Viterbi kept to valid tag sequences, optionally with a CRF); sentences longer than a block
are read in overlapping windows. Segmentation may learn several standards in one model: --train, --dev and
--test given as NAME=PATH once per standard train a multi-criteria segmenter, each sentence read after a
learned marker of its standard, batches mixing the corpora (--mix-temperature), the best checkpoint chosen by
the mean dev F1 over the standards (charformer.tasks.criteria; charformer.segment --standard NAME). lm
continues training a causal checkpoint from pretrain.py on new text, with its vocabulary, printing a sample at
each evaluation; --original-val measures forgetting, --rehearsal-data mixes the original corpus into every
batch (charformer.tasks.jobs). classify also continues a classifier fine-tuned here (--init OUT of an earlier
classify run): the next task trains the same body with a new head, and the earlier task's head is kept,
frozen, so --original-val (its labelled test file) measures what it forgot; --rehearsal-data (its training
file) mixes its texts into every batch, scored by its head; --ewc with --ewc-data (its training file) holds
the weights its loss depends on (charformer.finetuning.continual).

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
classifies through the masked-LM head (PET), for few-shot training; --distill-from DIR (--distill-alpha,
--distill-temperature) trains a cws or ner student, smaller or shortened, on a teacher's per-character tag
distributions as well as the gold tags (knowledge distillation). Continued pretraining on in-domain text
before fine-tuning: pretrain.py --init DIR. Zero-shot: charformer zeroshot.

Outputs in OUT: best/ (the best dev score), last/ (for --resume: the whole model, optimizer, RNGs and AdaLoRA's
state), metrics.jsonl, curves.png, results.json. With --method full, best/ is a complete checkpoint; with any
other method it is an adapter (adapter.json + adapter.safetensors: the trained tensors and the head, bound to
the --init checkpoint by a fingerprint of its weights, and recording its path). Either way the prediction tools
take OUT: `python -m charformer.segment --ckpt OUT` (.tag, .classify; .sample for lm) load the base named in
the adapter and put the adapter on it; `--base DIR` names the base when it has moved.

OUT/results.json: test_before and test_after (the test set scored with the model as loaded and after
fine-tuning) -- cws: f1, precision, recall, oov_recall, iv_recall (SIGHAN word scoring; with several
standards their means over the standards, each standard's own under "standards", and the same for the dev
sets in dev_before and dev_after; "standards" at the top level gives each one's training examples and share of
the batches); ner: f1, precision,
recall and per_type; classify: accuracy, macro_f1, per_class_f1, confusion (and, from a fine-tuned
classifier, original_before/after: the earlier task's scores with its head; previous_task); lm: loss
(nats/char), bpc, chars, and also dev_before/after, original_before/after, original_bpc_before/after,
sample_before/after, coverage.
Then method (cloze for --method cloze), method_options, toolbox (every toolbox option), augmented_examples,
trainable_params, total_params, trainable_share, adapter_bytes (what best/ takes on disk: for full the whole
checkpoint), dev_best_<metric>, steps, epochs, train_seconds, seconds_per_epoch,
peak_rss_mb (the peak resident memory of this process, from getrusage), wall_seconds.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, replace

import torch

from charformer.checkpoint import load_trainer_state, read_meta
from charformer.cli import add_dataclass_options, build_dataclass, given_fields, parse_with_config
from charformer.distributed import DistInfo
from charformer.errors import CharformerError, run_cli
from charformer.finetuning.continual import is_task_checkpoint
from charformer.finetuning.toolbox import Toolbox, ToolboxConfig, cloze_job, take_cloze
from charformer.model import ModelConfig
from charformer.peft import describe_trainable
from charformer.peft.training import MethodConfig, Tuning, check_options_apply
from charformer.run import RunArgs, add_run_options, describe_batch, run_args, start_processes, train, write_results
from charformer.tasks.criteria import check_same_standards, parse_corpora
from charformer.tasks.jobs import ForgettingConfig, Job, JobSpec, LMConfig, TaskConfig, lm_job, task_job
from charformer.tasks.model import TASKS, freeze
from charformer.train import TrainConfig

ALL_TASKS = (*TASKS, "lm")
DEFAULT_EPOCHS = 3


@dataclass
class FinetuneArgs:
    """A fine-tuning run's command line, parsed."""

    run: RunArgs
    spec: JobSpec
    epochs: float | None  # training length, unless --max-steps is given
    train_examples: int | None  # train on a random subset of this many examples
    method: MethodConfig
    cloze: bool  # --method cloze: classification through the masked-LM head (method above: full)
    toolbox: ToolboxConfig  # charformer/finetuning
    task_cfg: TaskConfig
    lm_cfg: LMConfig
    forgetting: ForgettingConfig  # lm, and classify from a fine-tuned classifier
    train: TrainConfig
    train_given: frozenset[str]  # the TrainConfig fields given: the others get fine-tuning defaults


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default=None, choices=ALL_TASKS, help="cws (word segmentation), ner, classify, or lm "
                   "(continued language-model training)")
    p.add_argument("--train", default=None, action="append", help="training file; cws: or NAME=PATH, given once "
                   "per segmentation standard, for one multi-criteria model (charformer.tasks.criteria)")
    p.add_argument("--dev", default=None, action="append", help="development file (early stopping, best "
                   "checkpoint); NAME=PATH per standard as --train")
    p.add_argument("--test", default=None, action="append", help="test file (scored before and after fine-tuning; "
                   "optional for lm); NAME=PATH per standard as --train")
    p.add_argument("--init", default=None, help="pretrained checkpoint directory (pretrain.py --out), or 'scratch'; "
                   "classify: also a classifier fine-tuned by this script (an earlier task, learned before this one)")
    p.add_argument("--out", default=None, help="output directory (best/, last/, metrics.jsonl, curves.png, results.json)")
    p.add_argument("--epochs", type=float, default=None, help=f"training length in passes over the training "
                   f"pieces (default {DEFAULT_EPOCHS}; or --max-steps)")
    p.add_argument("--train-examples", type=int, default=None, help="train on a random subset of this many training "
                   "sentences or texts, drawn with --seed (label-efficiency curves; not for lm; per standard with several)")
    add_run_options(p, model_group="model (--init scratch; with a checkpoint only dropout and attn_impl may change)")
    add_dataclass_options(p, MethodConfig, group="fine-tuning method")
    add_dataclass_options(p, ToolboxConfig, group="fine-tuning toolbox (charformer/finetuning; --method cloze: "
                                                   "classification through the masked-LM head)")
    add_dataclass_options(p, TaskConfig, group="task (cws, ner, classify)")
    add_dataclass_options(p, ForgettingConfig, group="forgetting and rehearsal (--task lm; --task classify from a "
                                                     "fine-tuned classifier)")
    add_dataclass_options(p, LMConfig, group="language model (--task lm)")
    add_dataclass_options(p, TrainConfig, group="training")
    return p


def parse_args(argv: list[str] | None) -> FinetuneArgs:
    """The command line (and --config file) as typed options, checked. Raises CharformerError."""
    given = parse_with_config(build_parser(), argv)
    task = given.get("task")
    needed = ("task", "train", "dev", "init", "out") + (() if task == "lm" else ("test",))
    missing = [f"--{name}" for name in needed if not given.get(name)]
    if missing:
        raise CharformerError(f"missing {', '.join(missing)} (on the command line or in the --config file)")
    if task not in ALL_TASKS:
        raise CharformerError(f"--task must be one of {ALL_TASKS}, got {task!r}")
    files = {name: parse_corpora(name, given[name]) for name in ("train", "dev", "test") if given.get(name)}
    check_same_standards(files)
    if task == "lm" and isinstance(files["train"], dict):
        raise CharformerError("--task lm takes plain files, not NAME=PATH (that is for multi-criteria cws)")
    run = run_args(given)
    cloze = take_cloze(given)  # before the method is chosen: cloze is full fine-tuning for it
    toolbox = build_dataclass(ToolboxConfig, given)
    spec = JobSpec(task, files["train"], files["dev"], files.get("test"), given["init"],
                   given_fields(ModelConfig, given))
    task_cfg, train_cfg = build_dataclass(TaskConfig, given), build_dataclass(TrainConfig, given)
    method = choose_method(build_dataclass(MethodConfig, given), set(given_fields(MethodConfig, given)), task_cfg, spec)
    if train_cfg.fsdp and method.method != "full":
        raise CharformerError(f"--fsdp is for --method full: --method {method.method} trains a small share of the "
                              "weights, which DDP (the default under torchrun) handles without sharding")
    if "max_steps" in given and "epochs" in given:
        raise CharformerError("give either --max-steps or --epochs, not both")
    examples = given.get("train_examples")
    if task == "lm" and (examples is not None or toolbox.augment or cloze):
        raise CharformerError("--train-examples and --augment are for cws, ner and classify, --method cloze for "
                              "classify")
    if "rehearsal_share" in given and not given.get("rehearsal_data"):
        raise CharformerError("--rehearsal-share needs --rehearsal-data")
    if task == "classify" and is_task_checkpoint(spec.init) and (method.method != "full" or cloze):
        raise CharformerError(f"--init {spec.init} is a fine-tuned classifier: the next task trains its whole body "
                              f"and a new head (--method full), not --method {'cloze' if cloze else method.method}")
    if examples is not None and examples < 1:
        raise CharformerError(f"--train-examples must be >= 1, got {examples}")
    return FinetuneArgs(run, spec, given.get("epochs"), examples, method, cloze, toolbox, task_cfg,
                        build_dataclass(LMConfig, given), build_dataclass(ForgettingConfig, given), train_cfg,
                        frozenset(given_fields(TrainConfig, given)))


def set_training_length(cfg: TrainConfig, epochs: float | None, given_fields: frozenset[str], n_train: int,
                        world_size: int = 1) -> TrainConfig:
    """`cfg` with `epochs` (unless --max-steps was given) turned into steps (an epoch: `n_train` pieces,
    `cfg.batch_size` x `world_size` ranks x `cfg.grad_accum` per step), and the fine-tuning defaults for what
    was not given: warmup 10% of the steps, evaluation once per epoch."""
    steps_per_epoch = math.ceil(n_train / (cfg.batch_size * world_size * cfg.grad_accum))
    if "max_steps" not in given_fields:
        epochs = DEFAULT_EPOCHS if epochs is None else epochs
        if epochs <= 0:
            raise CharformerError(f"--epochs must be positive, got {epochs}")
        cfg = replace(cfg, max_steps=max(1, math.ceil(epochs * steps_per_epoch)))
    if "warmup_steps" not in given_fields:
        cfg = replace(cfg, warmup_steps=max(1, cfg.max_steps // 10))
    if "eval_interval" not in given_fields:
        cfg = replace(cfg, eval_interval=min(steps_per_epoch, cfg.max_steps))
    return cfg


def choose_method(method_cfg: MethodConfig, method_given: set[str], task_cfg: TaskConfig, spec: JobSpec) -> MethodConfig:
    """Reconcile --method with --freeze: --freeze body is --method freeze; other --freeze values refine full."""
    method = method_cfg.method
    if task_cfg.freeze == "body":
        if method not in ("full", "freeze"):
            raise CharformerError(f"--freeze body means --method freeze; it cannot go with --method {method}")
        method = "freeze"
    elif task_cfg.freeze != "none" and (method != "full" or spec.task == "lm"):
        raise CharformerError(f"--freeze {task_cfg.freeze} refines --method full for cws, ner and classify")
    if method != "full" and spec.init == "scratch":
        raise CharformerError(f"--method {method} adapts a pretrained base and saves an adapter bound to it: give "
                              "--init DIR, or use --method full from scratch")
    check_options_apply(method_given, method)
    return replace(method_cfg, method=method)


def build_job(opts: FinetuneArgs, world_size: int) -> Job:
    """The task's data, model and objective; the objective draws global batches (per-rank batch x ranks), of
    which `fit` gives each rank its slice."""
    job_cfg = replace(opts.train, batch_size=opts.train.batch_size * world_size)
    if opts.spec.task == "lm":
        return lm_job(opts.spec, opts.lm_cfg, opts.forgetting, job_cfg, opts.task_cfg.eval_batch_size)
    job = task_job(opts.spec, opts.task_cfg, job_cfg, opts.train_examples, augment=opts.toolbox.augment,
                   forgetting=opts.forgetting)
    if job.previous is not None and opts.forgetting.rehearsal_data and world_size > 1:
        raise CharformerError("rehearsal of an earlier classifier runs in one process (not under torchrun)")
    return cloze_job(job, opts.toolbox, opts.spec.task) if opts.cloze else job


@dataclass
class Checkpoints:
    """`fit`'s checkpoints of a fine-tuning run. ``last/`` is always a complete checkpoint with the trainer
    state (and the method's, e.g. AdaLoRA's controller); ``best/`` is one too for --method full, else an
    adapter bound to the base."""

    job: Job
    tuning: Tuning

    def save_last(self, path, trainer_state, trainer_tensors, weights) -> None:
        tensors = {**trainer_tensors, **self.tuning.state_tensors()}
        self.job.save_full(path, self.tuning.record, trainer_state, tensors, weights)

    def save_best(self, path, weights) -> None:
        if self.tuning.saves_adapter:
            self.tuning.save(path, self.job.body, heads=self.job.heads, extra=self.job.description,
                             base_path=self.job.base_dir)
        else:
            self.job.save_full(path, self.tuning.record, None, None, weights)


def start_tuning(opts: FinetuneArgs, job: Job, cfg: TrainConfig, device: torch.device, dist_info: DistInfo) -> Tuning:
    """Put the method on the job's body (and freeze what --freeze says); when resuming, check it is the method
    of the run in --out and restore its state."""
    tuning = Tuning(job.body, opts.method, total_steps=cfg.max_steps, head_params=job.head_params)
    if opts.task_cfg.freeze not in ("none", "body"):  # part of the body kept fixed under full (see choose_method)
        freeze(job.model, opts.task_cfg.freeze)
    body_cfg, last = job.body.cfg, opts.run.out / "last"
    print(f"model: {opts.spec.init} ({body_cfg.n_layers} layers, d_model {body_cfg.d_model}, block "
          f"{body_cfg.block_size}, {'causal' if body_cfg.causal else 'bidirectional'}), task {opts.spec.task}, "
          f"method {tuning.method} {tuning.settings or ''}; {describe_trainable(job.model)}; {cfg.max_steps} steps "
          f"of {cfg.batch_size} x {cfg.grad_accum}; device {device}")
    print(describe_batch(cfg, dist_info, unit="pieces"))
    if opts.run.resume:
        tuning.check_resume(read_meta(last)[0], last)
        tuning.restore(load_trainer_state(last)[1])
    return tuning


def _headline(task: str, scores: dict) -> str:
    keys = {"cws": ("f1", "precision", "recall", "oov_recall", "iv_recall"), "ner": ("f1", "precision", "recall"),
            "classify": ("accuracy", "macro_f1"), "lm": ("bpc", "loss")}[task]
    return "  ".join(f"{k} {scores[k]:.4f}" if scores[k] is not None else f"{k} -" for k in keys)


def print_report(task: str, results: dict) -> None:
    names = [n for n in ("dev", "test", "original") if f"{n}_after" in results] if task == "lm" else \
        [n for n in ("test", "original") if f"{n}_after" in results]
    for name in names:
        print(f"\n{name} before fine-tuning: {_headline(task, results[f'{name}_before'])}")
        print(f"{name} after fine-tuning:  {_headline(task, results[f'{name}_after'])}")
    after = results.get("test_after")
    for name, scores in after.get("standards", {}).items() if task == "cws" else ():
        print(f"  {name:<12} {_headline(task, scores)}  (dev f1 {results['dev_after']['standards'][name]['f1']:.4f})")
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
        if "original_after" in results:
            before, after_b = results["original_before"]["accuracy"], results["original_after"]["accuracy"]
            print(f"the earlier task ({results['previous_task']['init']}): accuracy {before:.2%} -> {after_b:.2%} "
                  f"({100 * (after_b - before):+.2f} points)")
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
    opts = parse_args(argv)
    device, dist_info = start_processes(opts.train)
    job = build_job(opts, dist_info.world_size)
    cfg = set_training_length(opts.train, opts.epochs, opts.train_given, job.n_train, dist_info.world_size)
    job.model.to(device)
    # Scored before the method goes on, so that "before" is the base model for every method (a prefix changes
    # the outputs from the start; the task head is untrained either way).
    before = job.score(job.model) if dist_info.is_main else {}  # rank 0 alone scores and reports
    tuning = start_tuning(opts, job, cfg, device, dist_info)
    toolbox = Toolbox(job, opts.toolbox, batch_size=opts.train.batch_size * dist_info.world_size,
                      seed=cfg.seed, fsdp=cfg.fsdp)  # after the method: it sees which weights train
    out, task = opts.run.out, opts.spec.task
    if opts.run.resume:
        toolbox.restore(load_trainer_state(out / "last")[1])
    summary = train(opts.run, dist_info, job.model, toolbox.objective(tuning.objective(job.objective)), cfg,
                    toolbox.checkpoints(Checkpoints(job, tuning)), lr_scale=job.lr_scale,
                    desc=f"finetune {task} {tuning.method} {out.name}",
                    after_step=toolbox.after_step(tuning.after_step))
    if summary is None:  # not rank 0
        return 0
    best = job.load_best(out / "best", device)
    after = job.score(best)
    metric = job.objective.metric
    epochs = summary["steps"] * cfg.batch_size * dist_info.world_size * cfg.grad_accum / job.n_train
    results = {
        "task": task,
        "init": opts.spec.init,
        "files": {"train": opts.spec.train, "dev": opts.spec.dev, "test": opts.spec.test},
        **{f"{name}_{when}": scores[name] for name in before
           for when, scores in (("before", before), ("after", after))},
        f"dev_best_{metric}": summary[f"best_{metric}"],
        **tuning.summary(job.model, best=out / "best", best_model=best),
        **({"method": "cloze"} if opts.cloze else {}),
        **toolbox.summary(),
        "freeze": opts.task_cfg.freeze,
        "train_seconds": summary["train_seconds"],
        "seconds_per_epoch": summary["train_seconds"] / epochs,
        "steps": summary["steps"],
        "epochs": epochs,
        "stopped_early": summary["stopped_early"],
        **job.results,
        "model": job.body.cfg.to_dict(),
    }
    results = write_results(out, results, t_start=t_start, device=device, dist_info=dist_info, cfg=cfg)
    print_report(task, results)
    print(f"best: {out / 'best'}   curves: {out / 'curves.png'}   results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
