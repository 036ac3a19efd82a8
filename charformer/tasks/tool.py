"""Plumbing shared by the prediction tools `charformer.segment`, `charformer.tag` and `charformer.classify`:
their common options, loading a task checkpoint of the right kind, and reading and writing text exactly.

``--ckpt`` takes what finetune.py wrote: a complete task checkpoint (--method full), or an adapter, which is put
on the base checkpoint whose path adapter.json records, or on ``--base DIR`` (a base that has moved); a base
with other weights than the one it was trained on is refused (`charformer.peft.common`).

Input is a UTF-8 file or stdin, one sentence or text per line. As everywhere in charformer (`charformer.data`),
a line ends at LF, CRLF or a lone CR, and the ending is not part of the text: the tools write each line's own
ending back after its result. A byte-order mark at the start of the input is an encoding marker and is
dropped (the output has none); any other character, control characters, U+2028 and U+FEFF included, is text.
Output is written as UTF-8 bytes whatever the locale says.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, fields
from typing import Any

from ..data import decode_utf8, read_text, split_lines
from ..errors import CharformerError
from ..heap import retain_freed_memory
from ..quantize import inference_device, prepare_for_inference
from ..finetuning.ensemble import check_members
from .checkpoint import load_task_checkpoint
from .streaming import WINDOW_CHARS

TOOLS = {"cws": "charformer.segment", "ner": "charformer.tag", "classify": "charformer.classify"}
PROGRESS_MIN_LINES = 1000  # show a progress bar (stderr) from this many input lines on


def base_parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, action="append", help="task checkpoint or adapter directory (a "
                   "finetune.py --out directory, or its best/); given more than once, an ensemble that averages the "
                   "checkpoints' probabilities (charformer.finetuning.ensemble)")
    p.add_argument("--base", default=None, help="for an adapter (finetune.py --method other than full): its base "
                   "checkpoint, if not where adapter.json says")
    p.add_argument("file", nargs="?", help="input file (default: stdin)")
    p.add_argument("--batch-size", type=int, default=64, help="windows or texts per forward pass")
    p.add_argument("--window-chars", type=int, default=WINDOW_CHARS, help="input read, predicted and written in "
                   f"windows of about this many characters (charformer.tasks.streaming; default {WINDOW_CHARS})")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--int8", action="store_true", help="int8 weights in the transformer's linear layers: faster CPU "
                   "inference, scores within about 0.05 (charformer.quantize; implies the CPU)")
    return p


@dataclass
class ToolArgs:
    """The options every prediction tool has (`base_parser`)."""

    ckpt: list[str]  # one checkpoint, or several: an ensemble (charformer.finetuning.ensemble)
    base: str | None
    file: str | None  # None: stdin
    batch_size: int
    window_chars: int  # characters read, predicted and written per window (charformer.tasks.streaming)
    device: str
    int8: bool


def parse_tool_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[ToolArgs, dict[str, Any]]:
    """Parse a tool's command line (`base_parser` and the tool's own options): the shared options, and the
    tool's own by name."""
    parsed = vars(parser.parse_args(argv))
    return ToolArgs(**{f.name: parsed.pop(f.name) for f in fields(ToolArgs)}), parsed


def load_for(args: ToolArgs, task: str) -> list[tuple]:
    """The task models of ``args.ckpt`` (one or more: an ensemble) on ``args.device``, ready for inference
    (`prepare_for_inference`), each as ``(model, vocab, task description)``; also sets this process's malloc
    for inference (`charformer.heap.retain_freed_memory`). Raises CharformerError if a checkpoint is for another
    task (naming the tool to use), or the checkpoints cannot form an ensemble (`check_members`)."""
    if args.batch_size < 1 or args.window_chars < 1:
        raise CharformerError(f"--batch-size and --window-chars must be >= 1, got {args.batch_size}, {args.window_chars}")
    device = inference_device(args.device, args.int8)
    retain_freed_memory()
    members = []
    for path in args.ckpt:
        model, vocab, meta = load_task_checkpoint(path, device=device, base=args.base)
        if meta["task"] != task:
            raise CharformerError(f"{path}: a {meta['task']} model; use python -m {TOOLS[meta['task']]}")
        members.append((prepare_for_inference(model, int8=args.int8), vocab, meta))
    check_members(members, args.ckpt)
    return members


def read_lines(path: str | None) -> list[tuple[str, str]]:
    """The input's lines as ``(text, ending)`` pairs (`charformer.data.split_lines`): ``"".join(text + ending)``
    is the input again, less a leading byte-order mark."""
    return split_lines(read_text(path) if path else decode_utf8(sys.stdin.buffer.read(), "<stdin>"))


def show_progress(lines: list) -> bool:
    return len(lines) >= PROGRESS_MIN_LINES


def write(text: str) -> None:
    sys.stdout.buffer.write(text.encode("utf-8"))
    sys.stdout.buffer.flush()
