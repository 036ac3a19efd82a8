"""Sample text from a trained causal checkpoint.

    python -m charformer.sample --ckpt out/shakespeare_char_cpu --prompt "ROMEO:" --max-new-chars 300 --seed 1

Prints the prompt and its continuation to stdout, as UTF-8 whatever the locale. The prompt is taken as given,
every character kept (a U+FEFF in it is text, not a byte-order mark); characters outside the vocabulary are
read as [UNK], with a warning naming them. A prompt that is not valid UTF-8 (the shell passed bytes that the
locale could not decode) is an error. ``--ckpt`` may be a checkpoint directory or a training output directory
(its ``best/`` is used), or a parameter-efficient fine-tune (finetune.py --task lm --method lora, ...), whose
adapter goes on the base checkpoint it records (``--base DIR`` when that has moved).
"""

from __future__ import annotations

import argparse
import sys

import torch

from .errors import CharformerError, excerpt, run_cli
from .heap import retain_freed_memory
from .objectives import sample_text
from .peft import load_adapted_checkpoint
from .tasks.tool import write
from .quantize import inference_device, prepare_for_inference
from .vocab import EOS_ID


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint directory (or a pretrain.py / finetune.py --out directory)")
    p.add_argument("--base", default=None, help="for an adapter: its base checkpoint, if not where adapter.json says")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a line break)")
    p.add_argument("--max-new-chars", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--int8", action="store_true", help="int8 weights in the linear layers and the output layer: "
                   "faster CPU inference (charformer.quantize; implies the CPU)")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context each step (slower)")
    args = p.parse_args(argv)
    if args.temperature < 0 or (args.top_p is not None and not 0 < args.top_p <= 1) or args.max_new_chars < 0:
        raise CharformerError("need temperature >= 0, 0 < top-p <= 1 and max-new-chars >= 0")
    # Python decodes undecodable argv bytes to lone surrogates U+DC80..U+DCFF (PEP 383): name the first one.
    bad = next((i for i, c in enumerate(args.prompt) if "\udc80" <= c <= "\udcff"), None)
    if bad is not None:
        raise CharformerError(f"--prompt: not valid UTF-8 (byte 0x{ord(args.prompt[bad]) - 0xdc00:02x} at "
                              f"character {bad})")
    retain_freed_memory()
    model, vocab, _ = load_adapted_checkpoint(args.ckpt, inference_device(args.device, args.int8), base=args.base)
    if not model.cfg.causal:
        raise CharformerError(f"{args.ckpt}: a bidirectional (masked-LM) model cannot generate text")
    prepare_for_inference(model, int8=args.int8)
    unknown = sorted({c for c in vocab.normalize(args.prompt) if c not in vocab})
    if unknown:
        print(f"warning: prompt characters not in the vocabulary, read as [UNK]: {excerpt(''.join(unknown))}",
              file=sys.stderr)
    with torch.inference_mode():
        text = sample_text(model, vocab, args.prompt, args.max_new_chars, seed=args.seed, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, eos_id=EOS_ID, use_cache=not args.no_cache)
    write(text + "\n")
    return 0


if __name__ == "__main__":
    run_cli(main)
