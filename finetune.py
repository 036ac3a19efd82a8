"""Fine-tune a character encoder on word segmentation (cws), named-entity recognition (ner) or classification.

    python finetune.py --task cws --train ctb6/train.txt --dev ctb6/dev.txt --test ctb6/test.txt \\
        --init out/ctb6_mlm --out out/ctb6_cws --epochs 3
    python finetune.py --task ner --train resume/train.char.bmes --dev resume/dev.char.bmes \\
        --test resume/test.char.bmes --init scratch --n-layers 4 --n-heads 4 --d-model 192 --block-size 128 --crf
    python finetune.py --task classify --train chnsenticorp/train.tsv --dev chnsenticorp/dev.tsv \\
        --test chnsenticorp/test.tsv --init out/mlm --out out/senti --max-steps 2000

Reads the three files (formats and their errors: charformer.tasks.readers), takes the encoder from a pretrained
checkpoint (--init DIR: its architecture and vocabulary; characters it never saw read as [UNK]) or builds it
with random weights (--init scratch: the architecture from the model options, default bidirectional; the
vocabulary from the training file), puts a task head on it and trains both with the shared loop
(charformer.train.fit): AdamW, warmup then decay, early stopping on the dev metric (--patience), the best
checkpoint in OUT/best. Segmentation and NER tag characters (BMES / BIO / BIOES, decoded with Viterbi kept to
valid tag sequences, optionally with a CRF); sentences longer than a block are read in overlapping windows.

The test set is scored before fine-tuning (encoder as loaded, untrained head) and after (best checkpoint), and
OUT/results.json records both with the parameter counts and the time taken:

    test_before, test_after    cws: f1, precision, recall, oov_recall, iv_recall (SIGHAN word scoring)
                               ner: f1, precision, recall (entity-level, micro) and per_type
                               classify: accuracy, macro_f1, per_class_f1, confusion
    trainable_params, total_params, wall_seconds, train_seconds, steps, epochs, dev_best_<metric>, ...

OUT/best is a task checkpoint for `python -m charformer.segment`, `.tag` and `.classify`. Training length:
--max-steps N, or --epochs N (N x training pieces / batch size, rounded up; the default is 3 epochs). Unless
given, --warmup-steps is 10% of the steps and --eval-interval one epoch. The body learns at --lr, the head at
--lr x --head-lr-scale; --freeze keeps part of the body fixed.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from charformer.checkpoint import load_weights
from charformer.cli import add_dataclass_options, build_dataclass, parse_with_config
from charformer.errors import CharformerError, run_cli
from charformer.model import ModelConfig
from charformer.tasks.model import TASKS, build_task_model, freeze, load_task_checkpoint, pretrained_config, save_task_checkpoint
from charformer.tasks.objectives import ClassificationObjective, TaggingObjective
from charformer.tasks.readers import TOKEN_FORMATS, read_conll, read_cws, read_labeled
from charformer.tasks.schemes import SCHEMES, detect_scheme, is_valid, spans_to_words, tag_set
from charformer.train import TrainConfig, clear_run, fit, pick_device
from charformer.vocab import CharVocab

# Model options that do not change the weights' shapes or meaning, so they may differ from the --init checkpoint.
FREE_MODEL_OPTIONS = ("dropout", "attn_impl")
DEFAULT_EPOCHS = 3


def _option(default, text: str):
    return field(default=default, metadata={"help": text})


@dataclass
class TaskConfig:
    """How the task's files are read and what head is put on the encoder."""

    sep: str = _option(" ", "cws: the word separator, literally or as U+XXXX (U+3000 for a corpus that uses it)")
    scheme: str = _option("auto", "ner: BIO, BIOES, BMES, or auto (from the training file's tags)")
    token_format: str = _option("auto", "ner: char, char+position (Weibo NER's '叔0', the position is dropped), or "
                                "auto (from the file's first token)")
    label_column: str = _option("label", "classify: the label column, a header name or 0-based index")
    text_column: str = _option("auto", "classify: the text column, a header name or 0-based index, or auto (the "
                               "other of two columns, else text_a, text, sentence, review, content)")
    delimiter: str = _option("auto", "classify: tab, comma, or auto (comma for a .csv file, else tab)")
    crf: bool = _option(False, "tagging: a linear-chain CRF output layer instead of per-character softmax")
    pooling: str = _option("mean", "classify: a text's vector is the mean over its characters, or 'cls'")
    freeze: str = _option("none", "keep part of the body fixed: none, embeddings, bottom:N (embeddings and the N "
                          "lowest blocks) or body (train the head alone)")
    head_lr_scale: float = _option(10.0, "the head learns at lr x this")
    head_dropout: float = _option(0.1, "dropout before the head's linear layer")
    overlap: int | None = _option(None, "characters shared by consecutive windows of a sentence longer than a "
                                  "block (None: block_size / 4)")
    eval_batch_size: int = _option(64, "windows or texts per forward pass when evaluating")

    def __post_init__(self):
        if self.scheme != "auto" and self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be auto or one of {SCHEMES}, got {self.scheme!r}")
        if self.token_format not in TOKEN_FORMATS:
            raise ValueError(f"token_format must be one of {TOKEN_FORMATS}, got {self.token_format!r}")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if self.head_lr_scale <= 0 or self.eval_batch_size < 1 or not 0 <= self.head_dropout < 1:
            raise ValueError("need head_lr_scale > 0, eval_batch_size >= 1 and 0 <= head_dropout < 1")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML file of options (flags given here override it)")
    p.add_argument("--task", default=None, choices=TASKS, help="cws (word segmentation), ner or classify")
    p.add_argument("--train", default=None, help="training file")
    p.add_argument("--dev", default=None, help="development file (early stopping, best checkpoint)")
    p.add_argument("--test", default=None, help="test file (scored before and after fine-tuning)")
    p.add_argument("--init", default=None, help="pretrained checkpoint directory (pretrain.py --out), or 'scratch'")
    p.add_argument("--out", default=None, help="output directory (best/, last/, metrics.jsonl, curves.png, results.json)")
    p.add_argument("--epochs", type=float, default=None, help=f"training length in epochs (default {DEFAULT_EPOCHS}; "
                   "or --max-steps)")
    p.add_argument("--resume", action="store_true", default=None, help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an earlier run in --out (default: refuse)")
    add_dataclass_options(p, TaskConfig, group="task")
    add_dataclass_options(p, ModelConfig, skip=("vocab_size",), group="model (--init scratch; with a checkpoint only "
                                                                          "dropout and attn_impl may change)")
    add_dataclass_options(p, TrainConfig, group="training")
    return p


def read_task_files(task: str, cfg: TaskConfig, paths: dict[str, str]) -> dict[str, list]:
    """Train, dev and test examples (Sentence or Document lists) of `task`."""
    if task == "cws":
        return {name: read_cws(path, cfg.sep) for name, path in paths.items()}
    if task == "ner":
        return {name: read_conll(path, cfg.token_format) for name, path in paths.items()}
    return {name: read_labeled(path, label_column=cfg.label_column, text_column=cfg.text_column,
                               delimiter=cfg.delimiter) for name, path in paths.items()}


def _label_order(labels: set[str]) -> list[str]:
    """Labels sorted as numbers when they all are (0, 1, 2, ..., 10), else as strings."""
    return sorted(labels, key=int) if all(label.lstrip("-").isdigit() for label in labels) else sorted(labels)


def describe_task(task: str, cfg: TaskConfig, data: dict[str, list], block_size: int) -> dict:
    """The task description stored in every checkpoint: what the head predicts and how it decodes."""
    overlap = block_size // 4 if cfg.overlap is None else cfg.overlap
    if not 0 <= overlap < block_size:
        raise CharformerError(f"--overlap must be in [0, block_size={block_size}), got {overlap}")
    train = data["train"]
    if task == "classify":
        labels = _label_order({d.label for d in train})
        for name in ("dev", "test"):
            unseen = [d for d in data[name] if d.label not in labels]
            if unseen:
                print(f"warning: {len(unseen)} {name} texts have a label absent from the training file "
                      f"(first: {unseen[0].where}, {unseen[0].label!r}); they count as errors")
        return {"task": task, "labels": labels, "pooling": cfg.pooling, "head_dropout": cfg.head_dropout}
    if task == "cws":
        scheme, tags = "BMES", tag_set("BMES", [""], outside=False)
    else:
        scheme = detect_scheme(t for s in train for t in s.tags) if cfg.scheme == "auto" else cfg.scheme
        tags = tag_set(scheme, {t for s in train for _, _, t in s.spans})
        invalid = [s for s in train if not is_valid(s.tags, scheme)]
        if invalid:
            print(f"warning: {len(invalid)} training sentences have tag sequences that are not valid {scheme} (first: "
                  f"{invalid[0].where}); their entities were read leniently, like the CoNLL scorer does")
    reading = {"sep": cfg.sep} if task == "cws" else {"token_format": cfg.token_format}
    return {"task": task, "scheme": scheme, "tags": tags, "crf": cfg.crf, "head_dropout": cfg.head_dropout,
            "overlap": overlap, **reading}


def model_config(args, init: str) -> tuple[ModelConfig, CharVocab | None]:
    """The encoder's config (and, for a checkpoint, its vocabulary; None when building from scratch)."""
    if init == "scratch":
        causal = False if args.causal is None else args.causal  # an encoder reads the whole sentence
        return build_dataclass(ModelConfig, args, vocab_size=1, causal=causal), None
    cfg, vocab = pretrained_config(init)
    fixed = {k: v for k, v in cfg.to_dict().items() if k not in FREE_MODEL_OPTIONS}
    clashes = [f"--{k.replace('_', '-')} {getattr(args, k)} (checkpoint: {v})" for k, v in fixed.items()
               if getattr(args, k, None) is not None and getattr(args, k) != v]
    if clashes:
        raise CharformerError(f"the architecture comes from --init {init}; these options differ: {', '.join(clashes)}")
    free = {k: getattr(args, k) for k in FREE_MODEL_OPTIONS if getattr(args, k) is not None}
    return ModelConfig.from_dict({**cfg.to_dict(), **free}), vocab


def set_training_length(cfg: TrainConfig, args, n_train: int) -> TrainConfig:
    """`cfg` with --epochs turned into steps (an epoch: `n_train` pieces), and the fine-tuning defaults: warmup
    10% of the steps, evaluation once per epoch (unless given)."""
    if args.max_steps is not None and args.epochs is not None:
        raise CharformerError("give either --max-steps or --epochs, not both")
    steps_per_epoch = math.ceil(n_train / (cfg.batch_size * cfg.grad_accum))
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


def _headline(task: str, scores: dict) -> str:
    keys = {"cws": ("f1", "precision", "recall", "oov_recall", "iv_recall"), "ner": ("f1", "precision", "recall"),
            "classify": ("accuracy", "macro_f1")}[task]
    return "  ".join(f"{k} {scores[k]:.4f}" if scores[k] is not None else f"{k} -" for k in keys)


def print_report(task: str, results: dict) -> None:
    print(f"\ntest before fine-tuning: {_headline(task, results['test_before'])}")
    print(f"test after fine-tuning:  {_headline(task, results['test_after'])}")
    after = results["test_after"]
    if task == "ner":
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
    print(f"trainable parameters {results['trainable_params']:,} of {results['total_params']:,}; "
          f"{results['steps']} steps ({results['epochs']:.2f} epochs) in {results['wall_seconds']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    t_start = time.time()
    args = parse_with_config(build_parser(), argv)
    missing = [f"--{name}" for name in ("task", "train", "dev", "test", "init", "out") if not getattr(args, name)]
    if missing:
        raise CharformerError(f"missing {', '.join(missing)} (on the command line or in the --config file)")
    if args.task not in TASKS:
        raise CharformerError(f"--task must be one of {TASKS}, got {args.task!r}")
    out, resume = Path(args.out), bool(args.resume)
    if not resume and not args.overwrite and (out / "last").exists():
        raise CharformerError(f"{out} already holds a run: pass --resume to continue it, --overwrite to replace it, "
                              "or choose another --out")
    task_cfg = build_dataclass(TaskConfig, args)
    train_cfg = build_dataclass(TrainConfig, args)
    data = read_task_files(args.task, task_cfg, {"train": args.train, "dev": args.dev, "test": args.test})
    body_cfg, vocab = model_config(args, args.init)
    if vocab is None:
        vocab = CharVocab.build(x.text for x in data["train"])
        body_cfg = ModelConfig.from_dict({**body_cfg.to_dict(), "vocab_size": len(vocab)})
    task = describe_task(args.task, task_cfg, data, body_cfg.block_size)
    sizes = {"block_size": body_cfg.block_size, "batch_size": train_cfg.batch_size,
             "eval_batch_size": task_cfg.eval_batch_size}
    if args.task == "classify":
        objective = ClassificationObjective(task, data["train"], data["dev"], vocab, **sizes)
    else:
        words = {w for s in data["train"] for w in spans_to_words(s.text, s.spans)} if args.task == "cws" else None
        objective = TaggingObjective(task, data["train"], data["dev"], vocab, train_words=words, **sizes)
    train_cfg = set_training_length(train_cfg, args, objective.n_train)
    for name, examples in data.items():
        text = "".join(x.text for x in examples)
        print(f"{name}: {len(examples):,} {'texts' if args.task == 'classify' else 'sentences'}, {len(text):,} "
              f"characters, vocabulary coverage {vocab.coverage(text):.4%}")

    device = pick_device(train_cfg.device)
    torch.manual_seed(train_cfg.seed)
    model = build_task_model(body_cfg, task)
    if args.init != "scratch":
        load_weights(model.body, args.init)
    freeze(model, task_cfg.freeze)
    model.to(device)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"model: {args.init} encoder ({body_cfg.n_layers} layers, d_model {body_cfg.d_model}, block "
          f"{body_cfg.block_size}, {'causal' if body_cfg.causal else 'bidirectional'}) + {args.task} head "
          f"{task.get('tags') or task.get('labels')}; {trainable:,} of {total:,} parameters trainable; "
          f"{train_cfg.max_steps} steps of {train_cfg.batch_size} x {train_cfg.grad_accum}; device {device}")

    def test_scores(m) -> dict:
        m.eval()
        with torch.no_grad():
            return objective.score(m, data["test"])

    test_before = test_scores(model)

    def save(path, trainer_state, trainer_tensors):
        save_task_checkpoint(path, model, vocab, task, trainer_state=trainer_state, trainer_tensors=trainer_tensors)

    if args.overwrite and not resume:
        clear_run(out)  # only now: a run with bad input must leave the old one untouched
    out.mkdir(parents=True, exist_ok=True)
    summary = fit(model, objective, train_cfg, out, save, resume=resume, lr_scale={"head.": task_cfg.head_lr_scale},
                  desc=f"finetune {args.task} {out.name}")
    best, _, _ = load_task_checkpoint(out / "best", device=device)
    results = {
        "task": args.task,
        "init": args.init,
        "files": {"train": args.train, "dev": args.dev, "test": args.test},
        "test_before": test_before,
        "test_after": test_scores(best),
        f"dev_best_{objective.metric}": summary[f"best_{objective.metric}"],
        "trainable_params": trainable,
        "total_params": total,
        "wall_seconds": round(time.time() - t_start, 1),
        "train_seconds": summary["train_seconds"],
        "steps": summary["steps"],
        "epochs": summary["steps"] * train_cfg.batch_size * train_cfg.grad_accum / objective.n_train,
        "stopped_early": summary["stopped_early"],
        "train_examples": len(data["train"]),
        "train_pieces": objective.n_train,
        "head": task,
        "freeze": task_cfg.freeze,
        "task_options": asdict(task_cfg),
        "model": body_cfg.to_dict(),
        "device": str(device),
        "torch": torch.__version__,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print_report(args.task, results)
    print(f"best checkpoint: {out / 'best'}   curves: {out / 'curves.png'}   results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
