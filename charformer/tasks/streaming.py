"""Streaming input for the prediction tools: lines read as they arrive, predicted a window at a time.

`charformer.segment`, `.tag` and `.classify` read their input in chunks of bytes (as much as the pipe or file
has ready, up to `CHUNK_BYTES`), cut it into lines and gather the lines into *windows* of about `window_chars`
characters. Each window is predicted (its sentences sorted by length into batches, `predict_tags`) and its
output written, in input order, before the next window is read. Memory therefore depends on the window and the
longest line, not on the size of the input; output starts after the first window, and a run stopped half-way
has written the results of every window it finished.

The reading rules are those of `charformer.data`: strict UTF-8 (an error names the line and the byte offset
in the whole input), a byte-order mark dropped at the start of the input only, a line ends at LF, CRLF or a
lone CR. A CR that ends a chunk is held back until the next chunk shows whether an LF follows. Line breaks are
ASCII bytes that never occur inside a multi-byte UTF-8 sequence, so each line decodes on its own.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from ..data import LINE_BREAK_BYTES, decode_utf8, open_binary

CHUNK_BYTES = 1 << 16  # the most bytes taken from the input per read (a pipe's buffer on Linux)
WINDOW_CHARS = 1 << 18  # default window: ~5,000 CTB6 sentences, enough to sort into well-filled batches

Line = tuple[str, str]  # (text, ending): the ending is "\n", "\r\n", "\r" or "" (the last line, unterminated)


def read_chunk(stream: BinaryIO) -> bytes:
    """Up to `CHUNK_BYTES` bytes, as soon as any are ready (``read1``: no waiting for a full chunk); b"" at EOF."""
    read = getattr(stream, "read1", stream.read)
    return read(CHUNK_BYTES)


def iter_lines(stream: BinaryIO, name: str) -> Iterator[Line]:
    """The lines of a byte stream as ``(text, ending)`` pairs, each yielded as soon as its ending has arrived
    (the last one at EOF); ``"".join(text + ending)`` is the input less a leading BOM. `name` (a path or
    "<stdin>") prefixes errors. Raises CharformerError ``NAME:LINE: not valid UTF-8 at byte offset N ...``."""
    parts: list[bytes] = []  # the current line so far (a long line arrives in many chunks)
    number, offset, held = 1, 0, b""
    while True:
        chunk = read_chunk(stream)
        data = held + chunk
        held = b""
        if chunk and data.endswith(b"\r"):  # perhaps the first half of a CRLF
            data, held = data[:-1], b"\r"
        start = 0
        for m in LINE_BREAK_BYTES.finditer(data):
            raw = b"".join([*parts, data[start : m.start()]])
            yield decode_utf8(raw, name, line=number, offset=offset), m.group().decode("ascii")
            number, offset, start, parts = number + 1, offset + len(raw) + len(m.group()), m.end(), []
        if data[start:]:
            parts.append(data[start:])
        if not chunk:
            break
    last = decode_utf8(b"".join(parts), name, line=number, offset=offset)
    if last:  # an unterminated last line (not a BOM alone)
        yield last, ""


def windows(lines: Iterable[Line], window_chars: int) -> Iterator[list[Line]]:
    """Consecutive lists of lines holding about `window_chars` characters each (a line counts one more, so
    that empty lines count too): a window closes once it reaches the size, so a longer line is a window of
    its own."""
    window, size = [], 0
    for line in lines:
        window.append(line)
        size += len(line[0]) + 1
        if size >= window_chars:
            yield window
            window, size = [], 0
    if window:
        yield window


def read_windows(path: str | Path | None, window_chars: int = WINDOW_CHARS) -> Iterator[list[Line]]:
    """The windows (`windows`) of the file at `path`, or of stdin when `path` is None, read as they are needed.
    Raises CharformerError for a missing file, or bad UTF-8 when that line is reached."""
    if path is None:
        yield from windows(iter_lines(sys.stdin.buffer, "<stdin>"), window_chars)
        return
    path = Path(path)
    with open_binary(path) as stream:
        yield from windows(iter_lines(stream, str(path)), window_chars)
