"""The ``charformer`` command: one entry point whose subcommands are the project's scripts, tools and benchmarks.

    charformer pretrain --config configs/shakespeare_char_cpu.toml
    charformer finetune --task cws --train train.txt --dev dev.txt --test test.txt --init out/zh_mlm --out out/cws
    echo 中国人民站起来了 | charformer segment --ckpt out/cws
    charformer bench step_time --threads 1 --rounds 3

Each subcommand is the ``main`` of a module, given the rest of the command line: ``charformer pretrain`` is
``python pretrain.py``, ``charformer segment`` is ``python -m charformer.segment``, ``charformer bench NAME`` is
``python -m bench.NAME``; ``charformer COMMAND --help`` shows its options. Declared in pyproject.toml
(``[project.scripts]``); ``python -m charformer`` is the same command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import run_cli

# name -> (module whose main(argv) runs it, what it does)
COMMANDS = {
    "pretrain": ("pretrain", "pretrain a character model on raw text (causal LM or masked LM)"),
    "finetune": ("finetune", "fine-tune a checkpoint: word segmentation, NER, classification or more LM training"),
    "sample": ("charformer.sample", "generate text from a causal checkpoint"),
    "segment": ("charformer.segment", "segment text into words with a cws checkpoint"),
    "tag": ("charformer.tag", "tag named entities with an ner checkpoint"),
    "classify": ("charformer.classify", "classify texts with a classify checkpoint"),
    "serve": ("charformer.serve.__main__", "serve a model (and its adapters) over HTTP: segment, tag, classify, generate"),
    "prune": ("charformer.prune", "drop a tagger's least important layers, recover, report size/speed/F1"),
    "zeroshot": ("charformer.zeroshot", "classify texts with no labelled example: a pattern through a masked LM"),
    "bench": (None, "run a benchmark: charformer bench NAME [options]"),
}
BENCHMARKS = {
    "step_time": "wall time per training step: fit against a plain nanoGPT-style loop",
    "attention": "attention kernels: naive, fused softmax, Triton FlashAttention-2, PyTorch SDPA",
    "train_throughput": "training throughput (characters/s, MFU) per model size and attention implementation",
    "inference": "prediction tools end to end: fp32 against int8, segmentation and generation",
    "peft_compare": "fine-tuning methods compared on cws, classification and LM adaptation",
    "serve_load": "the HTTP server under load (1/8/32 clients, batching on/off) and faults, on loopback",
    "long_context": "hourglass vs plain throughput and budget, windowed-training memory, cost per character vs T",
    "cws_peers": "word segmentation side by side with jieba and THULAC: F1, OOV recall, chars/s, memory",
    "user_dict": "user-dictionary matching and lattice constraints on a 100,000-word dictionary",
    "protect_vs_gold": "how often each corpus's gold standard cuts inside a protected run (numbers, Latin, URLs)",
    "stream_memory": "peak memory of the streaming segmenter on 4 MB vs 40 MB of input",
    "toolbox": "few-shot classification: a head against cloze (PET) from a task-adaptively pretrained masked LM",
    "toolbox_methods": "the fine-tuning toolbox method by method, and a combination, against plain fine-tuning",
    "continual": "two classification tasks in sequence: the first task's accuracy after the second, plain/EWC/rehearsal",
    "multi_criteria": "one segmenter for four standards against four single-standard ones, same size and budget",
}


def _listing(entries: dict[str, str]) -> str:
    return "\n".join(f"  {name:<18}{text}" for name, text in entries.items())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="charformer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"commands:\n{_listing({k: v[1] for k, v in COMMANDS.items()})}\n\n"
                                       f"benchmarks (charformer bench NAME):\n{_listing(BENCHMARKS)}")
    p.add_argument("command", choices=COMMANDS, metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    p.add_argument("args", nargs=argparse.REMAINDER, help="the command's own options (see charformer COMMAND --help)")
    return p


def main(argv: list[str] | None = None) -> None:
    """Run ``charformer COMMAND ARGS...`` (exits with the command's status)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    module, rest, prog = COMMANDS[args.command][0], args.args, f"charformer {args.command}"
    if module is None:  # bench NAME ...
        if not rest or rest[0] not in BENCHMARKS:
            parser.error(f"charformer bench NAME: NAME is one of {', '.join(BENCHMARKS)}")
        module, rest, prog = f"bench.{rest[0]}", rest[1:], f"charformer bench {rest[0]}"
    sys.argv[0] = prog  # what the command's own --help and errors call it
    command = importlib.import_module(module).main
    run_cli(lambda: command(rest))
