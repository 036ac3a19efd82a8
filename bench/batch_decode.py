"""Generation throughput with continuous batching (`charformer.batch_decode`) against one request at a time.

    python -m bench.batch_decode                      # about a minute at one thread
    python -m bench.batch_decode --requests 1,8,32 --new-chars 64 --out out/batch_decode.json

For each count N of --requests: N requests with prompts of 5 to 40 characters (different lengths, so the
ragged cache is exercised), each asking for --new-chars characters greedily (no end-of-text: every request
runs its full length), answered three ways, taking turns over --repeats rounds (median):

* ``generate``: `charformer.generate.generate` per request, one after another (the server before batching);
* ``one_at_a_time``: a `BatchDecoder` with max_batch=1 (the server's batching off);
* ``batched``: a `BatchDecoder` with max_batch=N, all N requests added at once (the server under N clients).

Reported: generated characters per second (N x new_chars / seconds) of each, and batched / generate. The model
is randomly initialised with the --n-layers/--n-heads/--d-model/--block-size/--vocab shape: the speed depends
on the shapes, not on the weights. Output: a table on stdout and JSON with the command (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from charformer.batch_decode import BatchDecoder, DecodeRequest
from charformer.generate import generate
from charformer.model import CharTransformer, ModelConfig


def _requests(n: int, new_chars: int, vocab: int, rng: random.Random) -> list[list[int]]:
    return [[rng.randrange(7, vocab) for _ in range(rng.randint(5, 40))] for _ in range(n)]


def _run_decoder(model, prompts, new_chars: int, max_batch: int) -> None:
    decoder = BatchDecoder(model, max_batch)
    for prompt in prompts:
        decoder.add(DecodeRequest(prompt, new_chars, temperature=0.0))
    while decoder.busy:
        decoder.step()


def _run_generate(model, prompts, new_chars: int) -> None:
    for prompt in prompts:
        generate(model, torch.tensor([prompt]), new_chars, temperature=0.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", default="1,8,32", help="concurrent request counts, comma-separated")
    p.add_argument("--new-chars", type=int, default=64, help="characters generated per request")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (median)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--vocab", type=int, default=5000, help="vocabulary size")
    p.add_argument("--out", default="out/batch_decode.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = CharTransformer(ModelConfig(vocab_size=args.vocab, block_size=args.block_size, n_layers=args.n_layers,
                                        n_heads=args.n_heads, d_model=args.d_model)).eval()
    rows = []
    for n in map(int, args.requests.split(",")):
        prompts = _requests(n, args.new_chars, args.vocab, random.Random(n))
        ways = {"generate": lambda: _run_generate(model, prompts, args.new_chars),
                "one_at_a_time": lambda: _run_decoder(model, prompts, args.new_chars, 1),
                "batched": lambda: _run_decoder(model, prompts, args.new_chars, n)}
        times: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.repeats + 1):  # the first round warms up and is not counted
            for name, run in ways.items():
                started = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started)
        chars = n * args.new_chars
        row = {"requests": n, **{f"{name}_chars_per_s": round(chars / statistics.median(t[1:]))
                                 for name, t in times.items()}}
        row["batched_over_generate"] = round(row["batched_chars_per_s"] / row["generate_chars_per_s"], 2)
        rows.append(row)
        print(json.dumps(row))
    out = {"command": " ".join(["python -m bench.batch_decode", *(sys.argv[1:] if argv is None else argv)]),
           "machine": {"cpu_count": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                       "python": platform.python_version()},
           "model": {k: getattr(args, k) for k in ("n_layers", "n_heads", "d_model", "block_size", "vocab")},
           "new_chars": args.new_chars, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
