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
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from charformer.checkpoint import load_checkpoint, load_weights, read_meta, save_checkpoint
from charformer.cli import add_dataclass_options, build_dataclass, parse_with_config
from charformer.data import collect_files, encode_array, line_segments, read_corpus, split_corpus
from charformer.distributed import barrier, init_distributed, shutdown
from charformer.errors import CharformerError, run_cli
from charformer.model import CharTransformer, ModelConfig
from charformer.objectives import CausalLM, MaskedLM, sample_text
from charformer.tasks.jobs import model_config
from charformer.tasks.readers import read_cws
from charformer.train import TrainConfig, clear_run, fit, pick_device
from charformer.vocab import CharVocab


@dataclass
class DataConfig:
    """Where the text comes from and how the vocabulary is cut."""

    val_fraction: float = 0.1  # last share of the text held out when no --val file is given
    min_freq: int = 1
    max_vocab: int | None = None
    coverage: float | None = None
    eval_batches: int = 20  # batches per periodic evaluation (0: the whole validation text)
    sample_prompt: str = "\n"
    sample_chars: int = 200
    objective: str = "clm"  # "clm" (next character, causal) or "mlm" (masked characters, bidirectional)
    packing: str = "windows"  # mlm blocks: "windows" of raw text, or "lines" packed whole with [SEP]
    mask_prob: float = 0.15  # mlm: share of characters chosen for prediction
    data_format: str = "text"  # "text", or "cws": word-segmented lines whose space separators are dropped

    def __post_init__(self):
        if self.objective not in ("clm", "mlm"):
            raise ValueError(f"unknown objective {self.objective!r} (available: clm, mlm)")
        if self.packing not in ("windows", "lines"):
            raise ValueError(f"packing must be 'windows' or 'lines', got {self.packing!r}")
        if self.packing == "lines" and self.objective != "mlm":
            raise ValueError("--packing lines is for --objective mlm")
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.data_format not in ("text", "cws"):
            raise ValueError(f"data_format must be 'text' or 'cws', got {self.data_format!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML file of options (flags given here override it)")
    p.add_argument("--data", nargs="+", default=None, help="UTF-8 text files or folders to train on")
    p.add_argument("--val", nargs="+", default=None, help="validation text files (default: hold out the end of --data)")
    p.add_argument("--out", default=None, help="output directory (checkpoints, metrics.jsonl, curves.png, results.json)")
    p.add_argument("--resume", action="store_true", default=None, help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an earlier run in --out (default: refuse)")
    p.add_argument("--init", default=None, help="continue pretraining this checkpoint (pretrain.py --out) on --data: "
                   "domain- or task-adaptive pretraining (default: random weights)")
    add_dataclass_options(p, DataConfig, group="data")
    add_dataclass_options(p, ModelConfig, skip=("vocab_size",), group="model")
    add_dataclass_options(p, TrainConfig, group="training")
    return p


def read_texts(paths: list[str], data_format: str) -> str:
    """The text of `paths`: as it is, or (``cws``) the sentences of segmented files, one per line."""
    if data_format == "text":
        return read_corpus(paths)
    return "".join(sentence.text + "\n" for f in collect_files(paths) for sentence in read_cws(f))


def prepare_data(args, data_cfg: DataConfig, out: Path, resume: bool, vocab: CharVocab | None = None):
    """Read the corpus, build (or, when resuming, check) the vocabulary, unless `vocab` is given (--init).
    Returns (vocab, train_text, val_text)."""
    if isinstance(args.data, str):
        args.data = [args.data]
    if isinstance(args.val, str):
        args.val = [args.val]
    if not args.data:
        raise CharformerError("no training text: give --data PATH (or 'data' in the config file)")
    text = read_texts(args.data, data_cfg.data_format)
    if args.val:
        train_text, val_text = text, read_texts(args.val, data_cfg.data_format)
    else:
        train_text, val_text = split_corpus(text, data_cfg.val_fraction)
    if not train_text.strip():
        raise CharformerError(f"{', '.join(args.data)}: the corpus is empty")
    if vocab is None:
        vocab = CharVocab.build([train_text], min_freq=data_cfg.min_freq, max_size=data_cfg.max_vocab,
                                coverage=data_cfg.coverage)
    if resume and read_meta(out / "last")[2] != vocab:
        raise CharformerError(
            f"{out / 'last'}: its vocabulary differs from the one this training text gives: "
            "resume with the same --data and vocabulary options"
        )
    print(f"corpus: {len(train_text):,} train / {len(val_text):,} val characters; vocabulary {len(vocab):,} ids, "
          f"val coverage {vocab.coverage(val_text):.4%}")
    return vocab, train_text, val_text


def init_config(args, mlm: bool) -> tuple[ModelConfig, CharVocab]:
    """The model config and vocabulary of the --init checkpoint (with --dropout or --attn-impl if given).
    Raises CharformerError for options that would change its architecture or vocabulary, or another objective."""
    given = [f"--{k.replace('_', '-')}" for k in ("min_freq", "max_vocab", "coverage") if getattr(args, k) is not None]
    if given:
        raise CharformerError(f"{', '.join(given)}: the vocabulary comes from --init {args.init}")
    model_cfg, vocab = model_config(args, args.init)
    if model_cfg.causal == mlm:
        raise CharformerError(f"--init {args.init} is a {'causal' if model_cfg.causal else 'bidirectional'} model: "
                              f"continue it with --objective {'clm' if model_cfg.causal else 'mlm'}")
    return model_cfg, vocab


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


def main(argv: list[str] | None = None) -> int:
    t_start = time.time()
    args = parse_with_config(build_parser(), argv)
    out = Path(args.out or "out/pretrain")
    resume = bool(args.resume)
    data_cfg = build_dataclass(DataConfig, args)
    train_cfg = build_dataclass(TrainConfig, args)
    mlm = data_cfg.objective == "mlm"
    if args.causal is not None and args.causal == mlm:
        raise CharformerError(f"--objective {data_cfg.objective} needs --causal {str(not mlm).lower()} "
                              "(a masked LM is bidirectional, a next-character LM causal)")
    if not resume and not args.overwrite and (out / "last").exists():
        raise CharformerError(f"{out} already holds a run: pass --resume to continue it, --overwrite to replace it, "
                              "or choose another --out")
    if args.init:
        model_cfg, init_vocab = init_config(args, mlm)
        vocab, train_text, val_text = prepare_data(args, data_cfg, out, resume, init_vocab)
    else:
        vocab, train_text, val_text = prepare_data(args, data_cfg, out, resume)
        model_cfg = build_dataclass(ModelConfig, args, vocab_size=len(vocab), causal=not mlm)
    if resume:
        _, saved_cfg, _ = read_meta(out / "last")
        if saved_cfg != model_cfg:
            raise CharformerError(f"{out / 'last'}: the model options differ from the checkpoint's; resume with the same config")

    device = pick_device(train_cfg.device)
    dist_info = init_distributed(device.type)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
    say = print if dist_info.is_main else (lambda *a, **k: None)
    torch.manual_seed(train_cfg.seed)
    model = CharTransformer(model_cfg)
    if args.init and not resume:  # resuming reads OUT/last instead
        load_weights(model, args.init)
    model.to(device)
    global_batch = train_cfg.batch_size * dist_info.world_size * train_cfg.grad_accum
    say(f"effective batch: {train_cfg.batch_size} per rank x {dist_info.world_size} ranks x {train_cfg.grad_accum} "
        f"accumulation = {global_batch} sequences of {model_cfg.block_size} characters")
    say(f"model: {model.num_params() / 1e6:.2f}M parameters, {model_cfg.n_layers} layers x {model_cfg.n_heads} heads x "
          f"d_model {model_cfg.d_model}, block {model_cfg.block_size}, {'causal' if model_cfg.causal else 'bidirectional'}, "
          f"attention {model_cfg.attn_impl}, device {device}")
    # a global batch; each rank takes a slice
    objective = make_objective(data_cfg, vocab, train_text, val_text, model_cfg.block_size,
                               train_cfg.batch_size * dist_info.world_size)
    extra = {"objective": data_cfg.objective, "init": args.init, "data": asdict(data_cfg), "world_size": dist_info.world_size,
             "effective_batch": global_batch}

    def save(path, trainer_state, trainer_tensors, weights):
        save_checkpoint(path, model, model_cfg, vocab, extra=extra, trainer_state=trainer_state,
                        trainer_tensors=trainer_tensors, weights=weights)

    if args.overwrite and not resume and dist_info.is_main:
        clear_run(out)  # only now: a run with bad input must leave the old one untouched
    out.mkdir(parents=True, exist_ok=True)
    barrier(dist_info)
    summary = fit(model, objective, train_cfg, out, save, resume=resume, desc=f"pretrain {out.name}", dist_info=dist_info)
    shutdown(dist_info)
    if not dist_info.is_main:
        return 0

    best, _, _ = load_checkpoint(out / "best", device=device)
    final = objective.evaluate_full(best)
    sample = None if mlm else sample_text(best, vocab, data_cfg.sample_prompt, data_cfg.sample_chars, seed=train_cfg.seed)
    results = {
        "objective": data_cfg.objective,
        "init": args.init,  # the checkpoint pretraining continued from (None: random weights)
        "val_loss": final["loss"],  # nats per character (mlm: per masked character)
        "val_bpc": final.get("bpc"),  # null for mlm
        **({"val_mlm_accuracy": final["accuracy"]} if mlm else {}),
        "val_chars": final["chars"],  # characters scored (mlm: the masked ones)
        "steps": summary["steps"],
        "chars_seen": summary["chars_seen"],
        "wall_seconds": round(time.time() - t_start, 1),
        "train_seconds": summary["train_seconds"],
        "params": best.num_params(),
        "flops_per_char": 3 * best.flops_per_token(),
        "skipped_steps": summary["skipped_steps"],
        "world_size": dist_info.world_size,
        "effective_batch": global_batch,
        "device": str(device),
        "torch": torch.__version__,
        "sample": sample,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    if mlm:
        print(f"\nmasked-character loss {final['loss']:.4f} nats, accuracy {final['accuracy']:.2%} over "
              f"{final['chars']:,} masked validation characters (best checkpoint: {out / 'best'})")
    else:
        print(f"\nval loss {final['loss']:.4f} nats/char = {final['bpc']:.4f} bits/char over all {final['chars']:,} "
              f"validation characters (best checkpoint: {out / 'best'})")
    print(f"loss curve: {out / 'curves.png'}   results: {out / 'results.json'}")
    if sample is not None:
        print(f"sample:\n{sample}")
    return 0


if __name__ == "__main__":
    run_cli(main)
