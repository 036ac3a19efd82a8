"""Pretrain a character-level transformer on raw text.

    python pretrain.py --config configs/shakespeare_char_cpu.toml
    python pretrain.py --data my_texts/ --out out/mine --max-steps 5000 --device cuda
    python pretrain.py --objective mlm --packing lines --data-format cws --data train.txt --val dev.txt --out out/mlm

Builds a character vocabulary from the training text, trains with the objective chosen, evaluates every
``--eval-interval`` steps, keeps the best checkpoint, and at the end scores the whole validation text and writes
``OUT/results.json``. ``--resume`` continues an interrupted run from ``OUT/last`` with the same loss curve.

Objectives: ``clm`` (default) is next-character prediction for a causal model (generation), scored in nats and
bits per character. ``mlm`` is BERT-style masked-character prediction for a bidirectional encoder (it implies
``--causal false``; such an encoder is what finetune.py starts from), scored as loss (nats) and accuracy on the
masked characters of a fixed masking of the validation text (``val_bpc`` is null: a masked-LM loss is not a
bits-per-character figure). ``--packing lines`` (mlm only) takes each line as a sentence or document and packs
whole lines into blocks separated by [SEP]; the default ``windows`` cuts blocks anywhere in the text.
``--data-format cws`` reads word-segmented files (one sentence per line, words separated by ASCII spaces) and
drops the separators, so the training text of a segmentation corpus can be used for pretraining.

``--init DIR`` continues pretraining a checkpoint on new text instead of starting from random weights: its
architecture, vocabulary (characters it never saw read as [UNK]) and weights; only --dropout and --attn-impl
may change, and the objective must be the one it was trained with. This is domain- and task-adaptive
pretraining (Gururangan et al. 2020, "Don't Stop Pretraining"): more masked- or causal-LM training on
unlabelled text of the domain, or on the raw text of the task's own training set (``--data-format cws`` for a
segmented corpus), before fine-tuning the result with finetune.py.

    python pretrain.py --init out/zh_mlm --objective mlm --data-format cws --data ctb6/train.txt \
        --val ctb6/dev.txt --out out/zh_mlm_ctb6 --max-steps 2000 --lr 3e-4
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass

import torch

from charformer.checkpoint import load_checkpoint, load_weights, read_meta, save_checkpoint
from charformer.cli import add_dataclass_options, build_dataclass, given_fields, option, parse_with_config
from charformer.data import collect_files, encode_array, line_segments, read_corpus, split_corpus
from charformer.distributed import DistInfo
from charformer.errors import CharformerError, run_cli
from charformer.model import CharTransformer, ModelConfig
from charformer.objectives import CausalLM, MaskedLM, check_masking, sample_text
from charformer.run import (RunArgs, add_run_options, describe_batch, run_args, start_processes, train,
                            write_results)
from charformer.runlog import plot_curves, read_metrics
from charformer.tasks.jobs import model_config as checkpoint_model_config
from charformer.tasks.readers import read_cws
from charformer.train import TrainConfig
from charformer.vocab import CharVocab


@dataclass
class DataConfig:
    """Where the text comes from, how the vocabulary is cut, and what the model learns from it."""

    val_fraction: float = option(0.1, "share of the text held out at its end for validation when no --val is "
                                 "given")
    min_freq: int = option(1, "vocabulary: keep characters seen at least this many times (the rest read as [UNK])")
    max_vocab: int | None = option(None, "vocabulary: keep at most this many characters, the most frequent")
    coverage: float | None = option(None, "vocabulary: keep the most frequent characters that cover this share "
                                    "of the training text (e.g. 0.9999)")
    eval_batches: int = option(20, "batches scored at each periodic evaluation, from the start of the validation "
                               "text: an estimate on a subset (0: the whole text every time)")
    sample_prompt: str = option("\n", "clm: prompt of the sample printed at each evaluation and kept in "
                                "results.json")
    sample_chars: int = option(200, "clm: characters in that sample")
    objective: str = option("clm", "clm (next character, causal model) or mlm (masked characters, "
                            "bidirectional encoder)")
    packing: str = option("windows", "mlm blocks: windows cut anywhere in the text, or lines packed whole with "
                          "[SEP] between them")
    mask_prob: float = option(0.15, "mlm: share of the characters chosen for prediction")
    data_format: str = option("text", "text, or cws: word-segmented lines whose ASCII-space separators are "
                              "dropped")

    def __post_init__(self):
        if self.objective not in ("clm", "mlm"):
            raise ValueError(f"unknown objective {self.objective!r} (available: clm, mlm)")
        check_masking(self.packing, self.mask_prob)
        if self.packing == "lines" and self.objective != "mlm":
            raise ValueError("--packing lines is for --objective mlm")
        if self.data_format not in ("text", "cws"):
            raise ValueError(f"data_format must be 'text' or 'cws', got {self.data_format!r}")


@dataclass
class PretrainArgs:
    """A pretraining run's command line, parsed."""

    run: RunArgs
    data: list[str]  # training text files or folders
    val: list[str] | None  # validation files, or None: hold out the end of `data`
    data_cfg: DataConfig
    model: dict  # the model options given (the rest: ModelConfig's defaults, or --init's config)
    train: TrainConfig
    init: str | None  # continue pretraining this checkpoint (None: random weights)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", default=None, help="UTF-8 text files or folders to train on")
    p.add_argument("--val", nargs="+", default=None, help="validation text files (default: hold out the end of "
                   "--data)")
    p.add_argument("--out", default=None, help="output directory: checkpoints, metrics.jsonl, curves.png, "
                   "results.json (default: out/pretrain)")
    p.add_argument("--init", default=None, help="continue pretraining this checkpoint (pretrain.py --out) on --data: "
                   "domain- or task-adaptive pretraining (default: random weights)")
    add_run_options(p, model_group="model")
    add_dataclass_options(p, DataConfig, group="data")
    add_dataclass_options(p, TrainConfig, group="training")
    return p


def parse_args(argv: list[str] | None) -> PretrainArgs:
    """The command line (and --config file) as typed options. Raises CharformerError for a bad value."""
    given = parse_with_config(build_parser(), argv)
    as_list = lambda v: [v] if isinstance(v, str) else v  # noqa: E731  (a config file may give one path)
    if not given.get("data"):
        raise CharformerError("no training text: give --data PATH (or 'data' in the config file)")
    vocab_options = [f"--{k.replace('_', '-')}" for k in ("min_freq", "max_vocab", "coverage") if k in given]
    if given.get("init") and vocab_options:
        raise CharformerError(f"{', '.join(vocab_options)}: the vocabulary comes from --init {given['init']}")
    return PretrainArgs(run_args(given, "out/pretrain"), as_list(given["data"]), as_list(given.get("val")),
                        build_dataclass(DataConfig, given), given_fields(ModelConfig, given),
                        build_dataclass(TrainConfig, given), given.get("init"))


def read_texts(paths: list[str], data_format: str) -> str:
    """The text of `paths`: as it is, or (``cws``) the sentences of segmented files, one per line."""
    if data_format == "text":
        return read_corpus(paths)
    return "".join(sentence.text + "\n" for f in collect_files(paths) for sentence in read_cws(f))


def prepare_data(opts: PretrainArgs, vocab: CharVocab | None = None) -> tuple[CharVocab, str, str]:
    """Read the corpus, build (or, when resuming, check) the vocabulary, unless `vocab` is given (--init).
    Returns (vocab, train_text, val_text)."""
    cfg = opts.data_cfg
    text = read_texts(opts.data, cfg.data_format)
    if opts.val:
        train_text, val_text = text, read_texts(opts.val, cfg.data_format)
    else:
        train_text, val_text = split_corpus(text, cfg.val_fraction)
    if not train_text.strip():
        raise CharformerError(f"{', '.join(opts.data)}: the corpus is empty")
    if vocab is None:
        vocab = CharVocab.build([train_text], min_freq=cfg.min_freq, max_size=cfg.max_vocab, coverage=cfg.coverage)
    if opts.run.resume and read_meta(opts.run.out / "last")[2] != vocab:
        raise CharformerError(
            f"{opts.run.out / 'last'}: its vocabulary differs from the one this training text gives: "
            "resume with the same --data and vocabulary options"
        )
    print(f"corpus: {len(train_text):,} train / {len(val_text):,} val characters; vocabulary {len(vocab):,} ids, "
          f"val coverage {vocab.coverage(val_text):.4%}")
    return vocab, train_text, val_text


def model_config(opts: PretrainArgs, vocab_size: int) -> ModelConfig:
    """The model options given, with the vocabulary's size and the causality the objective needs; when
    resuming, they must be the checkpoint's. Raises CharformerError otherwise."""
    mlm = opts.data_cfg.objective == "mlm"
    if opts.model.get("causal", not mlm) == mlm:
        raise CharformerError(f"--objective {opts.data_cfg.objective} needs --causal {str(not mlm).lower()} "
                              "(a masked LM is bidirectional, a next-character LM causal)")
    try:
        cfg = ModelConfig(**{**opts.model, "vocab_size": vocab_size, "causal": not mlm})
    except (TypeError, ValueError) as e:
        raise CharformerError(str(e)) from None
    check_resume_config(opts, cfg)
    return cfg


def init_config(opts: PretrainArgs) -> tuple[ModelConfig, CharVocab]:
    """The model config and vocabulary of the --init checkpoint (with --dropout or --attn-impl if given).
    Raises CharformerError for options that would change its architecture, or another objective than its own."""
    cfg, vocab = checkpoint_model_config(opts.init, opts.model)
    if cfg.causal == (opts.data_cfg.objective == "mlm"):
        raise CharformerError(f"--init {opts.init} is a {'causal' if cfg.causal else 'bidirectional'} model: "
                              f"continue it with --objective {'clm' if cfg.causal else 'mlm'}")
    check_resume_config(opts, cfg)
    return cfg, vocab


def check_resume_config(opts: PretrainArgs, cfg: ModelConfig) -> None:
    """When resuming, raise CharformerError unless `cfg` is the config of the checkpoint in --out."""
    if opts.run.resume and read_meta(opts.run.out / "last")[1] != cfg:
        raise CharformerError(f"{opts.run.out / 'last'}: the model options differ from the checkpoint's; resume "
                              "with the same config")


def make_objective(data_cfg: DataConfig, vocab: CharVocab, train_text: str, val_text: str, block_size: int,
                   batch_size: int) -> CausalLM | MaskedLM:
    """The pretraining objective of `data_cfg`, with its training and validation text encoded once."""
    if data_cfg.packing == "lines":
        train, val = line_segments(train_text, vocab, block_size), line_segments(val_text, vocab, block_size)
        for name, segments in (("training", train), ("validation", val)):
            if not segments:
                raise CharformerError(f"the {name} text has no non-empty line to pack")
    else:
        train, val = encode_array(vocab, train_text), encode_array(vocab, val_text)
        for name, tokens in (("training", train), ("validation", val)):
            if len(tokens) < block_size + 1:
                raise CharformerError(
                    f"the {name} text has {len(tokens)} characters, fewer than one block of {block_size + 1}: "
                    "use more text or a smaller --block-size"
                )
    if data_cfg.objective == "mlm":
        return MaskedLM(train, val, vocab, block_size=block_size, batch_size=batch_size, packing=data_cfg.packing,
                        mask_prob=data_cfg.mask_prob, eval_batches=data_cfg.eval_batches)
    return CausalLM(train, val, vocab, block_size=block_size, batch_size=batch_size, eval_batches=data_cfg.eval_batches,
                    sample_prompt=data_cfg.sample_prompt, sample_chars=data_cfg.sample_chars)


@dataclass
class Checkpoints:
    """`fit`'s checkpoints of a pretraining run: the model, its config and vocabulary, and `extra` config.json
    fields; ``last/`` also holds the trainer state."""

    model: CharTransformer
    cfg: ModelConfig
    vocab: CharVocab
    extra: dict

    def save_last(self, path, trainer_state, trainer_tensors, weights) -> None:
        save_checkpoint(path, self.model, self.cfg, self.vocab, extra=self.extra, trainer_state=trainer_state,
                        trainer_tensors=trainer_tensors, weights=weights)

    def save_best(self, path, weights) -> None:
        save_checkpoint(path, self.model, self.cfg, self.vocab, extra=self.extra, weights=weights)


def finish(opts: PretrainArgs, objective, vocab: CharVocab, summary: dict, device: torch.device, dist_info: DistInfo,
           t_start: float) -> None:
    """Score the best checkpoint on the whole validation text; write results.json, redraw curves.png with that
    figure, and print it."""
    out, mlm = opts.run.out, opts.data_cfg.objective == "mlm"
    best, _, _ = load_checkpoint(out / "best", device=device)
    final = objective.evaluate_full(best)
    sample = None if mlm else sample_text(best, vocab, opts.data_cfg.sample_prompt, opts.data_cfg.sample_chars,
                                          seed=opts.train.seed)
    results = {
        "objective": opts.data_cfg.objective,
        "init": opts.init,  # the checkpoint pretraining continued from (None: random weights)
        "val_loss": final["loss"],  # nats per character (mlm: per masked character)
        "val_bpc": final.get("bpc"),  # null for mlm
        **({"val_mlm_accuracy": final["accuracy"]} if mlm else {}),
        "val_chars": final["chars"],  # characters scored (mlm: the masked ones)
        "steps": summary["steps"],
        "chars_seen": summary["chars_seen"],
        "train_seconds": summary["train_seconds"],
        "params": best.num_params(),
        "flops_per_char": 3 * best.flops_per_token(),
        "skipped_steps": summary["skipped_steps"],
        "sample": sample,
    }
    write_results(out, results, t_start=t_start, device=device, dist_info=dist_info, cfg=opts.train)
    plot_curves(read_metrics(out / "metrics.jsonl"), out / "curves.png", title=f"pretrain {out.name}",
                final={f"val_{k}": v for k, v in final.items()})
    if mlm:
        print(f"\nmasked-character loss {final['loss']:.4f} nats, accuracy {final['accuracy']:.2%} over "
              f"{final['chars']:,} masked validation characters (best checkpoint: {out / 'best'})")
    else:
        print(f"\nval loss {final['loss']:.4f} nats/char = {final['bpc']:.4f} bits/char over all {final['chars']:,} "
              f"validation characters (best checkpoint: {out / 'best'})")
    print(f"loss curve: {out / 'curves.png'}   results: {out / 'results.json'}")
    if sample is not None:
        print(f"sample:\n{sample}")


def main(argv: list[str] | None = None) -> int:
    t_start = time.time()
    opts = parse_args(argv)
    if opts.init:
        model_cfg, init_vocab = init_config(opts)
        vocab, train_text, val_text = prepare_data(opts, init_vocab)
    else:
        vocab, train_text, val_text = prepare_data(opts)
        model_cfg = model_config(opts, len(vocab))
    device, dist_info = start_processes(opts.train)
    torch.manual_seed(opts.train.seed)
    model = CharTransformer(model_cfg)
    if opts.init and not opts.run.resume:  # resuming reads OUT/last instead
        load_weights(model, opts.init)
    model.to(device)
    print(describe_batch(opts.train, dist_info, f"sequences of {model_cfg.block_size} characters"))
    print(f"model: {model.num_params() / 1e6:.2f}M parameters, {model_cfg.n_layers} layers x {model_cfg.n_heads} "
          f"heads x d_model {model_cfg.d_model}, block {model_cfg.block_size}, "
          f"{'causal' if model_cfg.causal else 'bidirectional'}, attention {model_cfg.attn_impl}, device {device}")
    # a global batch; each rank takes a slice
    objective = make_objective(opts.data_cfg, vocab, train_text, val_text, model_cfg.block_size,
                               opts.train.batch_size * dist_info.world_size)
    extra = {"objective": opts.data_cfg.objective, "init": opts.init, "data": asdict(opts.data_cfg), "world_size": dist_info.world_size,
             "effective_batch": opts.train.batch_size * dist_info.world_size * opts.train.grad_accum}
    summary = train(opts.run, dist_info, model, objective, opts.train, Checkpoints(model, model_cfg, vocab, extra),
                    desc=f"pretrain {opts.run.out.name}")
    if summary is not None:  # rank 0
        finish(opts, objective, vocab, summary, device, dist_info, t_start)
    return 0


if __name__ == "__main__":
    run_cli(main)
