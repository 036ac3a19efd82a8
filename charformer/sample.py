"""Sample text from a trained causal checkpoint.

    python -m charformer.sample --ckpt out/shakespeare_char_cpu --prompt "ROMEO:" --max-new-chars 300 --seed 1

Prints the prompt and its continuation to stdout. ``--ckpt`` may be a checkpoint directory or a training output
directory (its ``best/`` is used).
"""

from __future__ import annotations

import argparse
import sys

import torch

from .checkpoint import load_checkpoint
from .errors import CharformerError, run_cli
from .objectives import sample_text
from .train import pick_device
from .vocab import EOS_ID


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint directory (or a pretrain.py --out directory)")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a line break)")
    p.add_argument("--max-new-chars", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context each step (slower)")
    args = p.parse_args(argv)
    if args.temperature < 0 or (args.top_p is not None and not 0 < args.top_p <= 1) or args.max_new_chars < 0:
        raise CharformerError("need temperature >= 0, 0 < top-p <= 1 and max-new-chars >= 0")
    model, vocab, _ = load_checkpoint(args.ckpt, device=pick_device(args.device))
    if not model.cfg.causal:
        raise CharformerError(f"{args.ckpt}: a bidirectional (masked-LM) model cannot generate text")
    unknown = sorted({c for c in vocab.normalize(args.prompt) if c not in vocab})
    if unknown:
        print(f"warning: prompt characters not in the vocabulary, read as [UNK]: {''.join(unknown)}", file=sys.stderr)
    with torch.inference_mode():
        text = sample_text(model, vocab, args.prompt, args.max_new_chars, seed=args.seed, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, eos_id=EOS_ID, use_cache=not args.no_cache)
    print(text)
    return 0


if __name__ == "__main__":
    run_cli(main)
