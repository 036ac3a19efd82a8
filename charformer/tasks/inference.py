"""Plumbing shared by the prediction tools `charformer.segment`, `charformer.tag` and `charformer.classify`:
their common options, loading a task checkpoint of the right kind, and reading and writing text exactly.

Input is a UTF-8 file or stdin, one sentence or text per line; a line ends at LF, and a CR before the LF
belongs to the line ending, not to the text (CRLF files are read as text lines). A leading byte-order mark is
an encoding marker and is dropped, as everywhere in charformer. Output is written as UTF-8 bytes whatever
the locale says.
"""

from __future__ import annotations

import argparse
import sys

from ..data import decode_utf8, read_text
from ..errors import CharformerError
from ..train import pick_device
from .model import load_task_checkpoint

TOOLS = {"cws": "charformer.segment", "ner": "charformer.tag", "classify": "charformer.classify"}
PROGRESS_MIN_LINES = 1000  # show a progress bar (stderr) from this many input lines on


def base_parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="task checkpoint directory (a finetune.py --out directory, or its best/)")
    p.add_argument("file", nargs="?", help="input file (default: stdin)")
    p.add_argument("--batch-size", type=int, default=64, help="windows or texts per forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    return p


def load_for(args: argparse.Namespace, task: str):
    """The task model of ``args.ckpt`` on ``args.device`` with its vocabulary and task description. Raises
    CharformerError if the checkpoint is for another task (naming the tool to use)."""
    model, vocab, meta = load_task_checkpoint(args.ckpt, device=pick_device(args.device))
    if meta["task"] != task:
        raise CharformerError(f"{args.ckpt}: a {meta['task']} model; use python -m {TOOLS[meta['task']]}")
    if args.batch_size < 1:
        raise CharformerError(f"--batch-size must be >= 1, got {args.batch_size}")
    return model, vocab, meta


def read_lines(path: str | None) -> list[tuple[str, str]]:
    """The input's lines as ``(text, ending)`` pairs, ending ``"\\n"``, ``"\\r\\n"`` or ``""`` (a last line
    without a line break). ``"".join(text + ending)`` is the input again."""
    text = read_text(path) if path else decode_utf8(sys.stdin.buffer.read(), "<stdin>")
    parts = text.split("\n")
    lines = [(p[:-1], "\r\n") if p.endswith("\r") else (p, "\n") for p in parts[:-1]]
    if parts[-1]:
        lines.append((parts[-1], ""))
    return lines


def show_progress(lines: list) -> bool:
    return len(lines) >= PROGRESS_MIN_LINES


def write(text: str) -> None:
    sys.stdout.buffer.write(text.encode("utf-8"))
    sys.stdout.buffer.flush()
