"""Pretrain a character-level transformer on raw text.

    python pretrain.py --config configs/shakespeare_char_cpu.toml
    python pretrain.py --data my_texts/ --out out/mine --max-steps 5000 --device cuda

Builds a character vocabulary from the training text, trains with the objective chosen (``clm``: next-character
prediction, for generation), evaluates every ``--eval-interval`` steps in nats and bits per character, keeps the
best checkpoint, and at the end scores the whole validation text and writes ``OUT/results.json``. ``--resume``
continues an interrupted run from ``OUT/last`` with the same loss curve.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from charformer.checkpoint import load_checkpoint, read_meta, save_checkpoint
from charformer.cli import add_dataclass_options, build_dataclass, parse_with_config
from charformer.data import encode_array, read_corpus, split_corpus
from charformer.distributed import barrier, init_distributed, shutdown
from charformer.errors import CharformerError, run_cli
from charformer.model import CharTransformer, ModelConfig
from charformer.objectives import CausalLM, sample_text
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
    objective: str = "clm"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TOML file of options (flags given here override it)")
    p.add_argument("--data", nargs="+", default=None, help="UTF-8 text files or folders to train on")
    p.add_argument("--val", nargs="+", default=None, help="validation text files (default: hold out the end of --data)")
    p.add_argument("--out", default=None, help="output directory (checkpoints, metrics.jsonl, curves.png, results.json)")
    p.add_argument("--resume", action="store_true", default=None, help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an earlier run in --out (default: refuse)")
    add_dataclass_options(p, DataConfig, group="data")
    add_dataclass_options(p, ModelConfig, skip=("vocab_size",), group="model")
    add_dataclass_options(p, TrainConfig, group="training")
    return p


def prepare_data(args, data_cfg: DataConfig, out: Path, resume: bool):
    """Read the corpus, build (or, when resuming, reload) the vocabulary, encode train/val once."""
    if isinstance(args.data, str):
        args.data = [args.data]
    if isinstance(args.val, str):
        args.val = [args.val]
    if not args.data:
        raise CharformerError("no training text: give --data PATH (or 'data' in the config file)")
    text = read_corpus(args.data)
    if args.val:
        train_text, val_text = text, read_corpus(args.val)
    else:
        train_text, val_text = split_corpus(text, data_cfg.val_fraction)
    if not train_text.strip():
        raise CharformerError(f"{', '.join(args.data)}: the corpus is empty")
    vocab = CharVocab.build([train_text], min_freq=data_cfg.min_freq, max_size=data_cfg.max_vocab, coverage=data_cfg.coverage)
    if resume and read_meta(out / "last")[2] != vocab:
        raise CharformerError(
            f"{out / 'last'}: its vocabulary differs from the one this training text gives: "
            "resume with the same --data and vocabulary options"
        )
    print(f"corpus: {len(train_text):,} train / {len(val_text):,} val characters; vocabulary {len(vocab):,} ids, "
          f"val coverage {vocab.coverage(val_text):.4%}")
    return vocab, encode_array(vocab, train_text), encode_array(vocab, val_text)


def main(argv: list[str] | None = None) -> int:
    t_start = time.time()
    args = parse_with_config(build_parser(), argv)
    out = Path(args.out or "out/pretrain")
    resume = bool(args.resume)
    data_cfg = build_dataclass(DataConfig, args)
    train_cfg = build_dataclass(TrainConfig, args)
    if data_cfg.objective != "clm":
        raise CharformerError(f"unknown objective {data_cfg.objective!r} (available: clm)")
    if not resume and not args.overwrite and (out / "last").exists():
        raise CharformerError(f"{out} already holds a run: pass --resume to continue it, --overwrite to replace it, "
                              "or choose another --out")
    vocab, train_tokens, val_tokens = prepare_data(args, data_cfg, out, resume)
    model_cfg = build_dataclass(ModelConfig, args, vocab_size=len(vocab))
    for name, tokens in (("training", train_tokens), ("validation", val_tokens)):
        if len(tokens) < model_cfg.block_size + 1:
            raise CharformerError(
                f"the {name} text has {len(tokens)} characters, fewer than one block of {model_cfg.block_size + 1}: "
                "use more text or a smaller --block-size"
            )
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
    model = CharTransformer(model_cfg).to(device)
    global_batch = train_cfg.batch_size * dist_info.world_size * train_cfg.grad_accum
    say(f"effective batch: {train_cfg.batch_size} per rank x {dist_info.world_size} ranks x {train_cfg.grad_accum} "
        f"accumulation = {global_batch} sequences of {model_cfg.block_size} characters")
    say(f"model: {model.num_params() / 1e6:.2f}M parameters, {model_cfg.n_layers} layers x {model_cfg.n_heads} heads x "
          f"d_model {model_cfg.d_model}, block {model_cfg.block_size}, {'causal' if model_cfg.causal else 'bidirectional'}, "
          f"attention {model_cfg.attn_impl}, device {device}")
    objective = CausalLM(train_tokens, val_tokens, vocab, block_size=model_cfg.block_size,
                         batch_size=train_cfg.batch_size * dist_info.world_size,  # a global batch; each rank takes a slice
                         eval_batches=data_cfg.eval_batches, sample_prompt=data_cfg.sample_prompt, sample_chars=data_cfg.sample_chars)
    extra = {"objective": data_cfg.objective, "data": asdict(data_cfg), "world_size": dist_info.world_size,
             "effective_batch": global_batch}

    def save(path, trainer_state, trainer_tensors):
        save_checkpoint(path, model, model_cfg, vocab, extra=extra, trainer_state=trainer_state, trainer_tensors=trainer_tensors)

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
    sample = sample_text(best, vocab, data_cfg.sample_prompt, data_cfg.sample_chars, seed=train_cfg.seed)
    results = {
        "val_loss": final["loss"],
        "val_bpc": final["bpc"],
        "val_chars": final["chars"],
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
    print(f"\nval loss {final['loss']:.4f} nats/char = {final['bpc']:.4f} bits/char over all {final['chars']:,} "
          f"validation characters (best checkpoint: {out / 'best'})")
    print(f"loss curve: {out / 'curves.png'}   results: {out / 'results.json'}")
    print(f"sample:\n{sample}")
    return 0


if __name__ == "__main__":
    run_cli(main)
