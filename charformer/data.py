"""Reading text corpora and drawing training batches of characters.

Every text file charformer reads goes through `read_text`, so all readers and tools agree on three rules:

* **Encoding**: strict UTF-8. A file that is not valid UTF-8 is refused with ``FILE:LINE: not valid UTF-8 at
  byte offset N``; nothing is ever replaced or skipped.
* **Byte-order mark**: a U+FEFF at the very start of a file (or of stdin) is an encoding marker, not text, and
  is dropped; a U+FEFF anywhere else is an ordinary character and kept. Tools therefore never write a BOM.
* **Line endings**: a line ends at LF, CRLF or a lone CR (old Mac files), as in Python's universal newlines
  and the csv module; `split_lines` keeps each line's ending so that tools can write it back. Nothing else
  ends a line: U+2028, U+0085 (NEL), vertical tab and form feed are ordinary characters (unlike
  ``str.splitlines``). Raw-text pretraining keeps the line endings as characters of the text.

A corpus is one or more UTF-8 files (or folders of them), encoded once into a numpy array of ids (uint16 when
the vocabulary fits, else uint32) and split into train and validation parts: a separate validation file, or
the last `val_fraction` of the text (as nanoGPT splits Tiny Shakespeare, so bits-per-character figures
compare). Training draws random windows of ``block_size + 1`` characters (inputs and next-character targets,
nanoGPT style); evaluation walks the whole validation text in consecutive windows so that every character is
scored exactly once.

Line-structured corpora (one sentence or document per line) can instead be cut into *segments* (a line, or a
piece of a line longer than a block) and packed into blocks of whole segments separated by ``[SEP]``, the way
BERT packs sentences (Devlin et al. 2019); the packed blocks are right-padded and carry their lengths.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import numpy as np
import torch

from .errors import CharformerError
from .vocab import PAD_ID, SEP_ID, CharVocab

IGNORE_INDEX = -100  # target value that cross-entropy skips (padding, unmasked positions in MLM)
LINE_BREAK = re.compile(r"(\r\n|\r|\n)")  # CRLF first, so that it is one line ending, not two
LINE_BREAK_BYTES = re.compile(rb"\r\n|\r|\n")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def read_text(path: str | Path) -> str:
    """Read a UTF-8 text file (a leading BOM is dropped). Line endings are kept as they are.

    Raises CharformerError naming the file, the line and the byte offset of the first invalid byte, or if the
    file does not exist.
    """
    path = Path(path)
    with open_binary(path) as f:
        return decode_utf8(f.read(), str(path))


def open_binary(path: str | Path) -> BinaryIO:
    """`path` opened for reading bytes. Raises CharformerError if it does not exist or is a folder."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise CharformerError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CharformerError(f"{path}: is a directory, expected a text file") from None


def decode_utf8(data: bytes, name: str, *, line: int = 1, offset: int = 0) -> str:
    """Decode UTF-8 bytes (a leading BOM is dropped); `name` (a path, or "<stdin>") prefixes the error. For a
    piece of a longer input, `line` and `offset` say where it starts (line number, byte offset); a BOM is then
    dropped only at offset 0.

    Raises CharformerError ``NAME:LINE: not valid UTF-8 at byte offset N (byte 0xXX: reason)``, lines counted
    as `split_lines` counts them.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line += len(LINE_BREAK_BYTES.findall(data, 0, e.start))
        hint = (": the data starts with a UTF-16 byte-order mark; convert it to UTF-8 (iconv -f UTF-16 -t UTF-8)"
                if offset == 0 and data.startswith(_UTF16_BOMS) else "")
        raise CharformerError(f"{name}:{line}: not valid UTF-8 at byte offset {offset + e.start} "
                              f"(byte 0x{data[e.start]:02x}: {e.reason}){hint}") from None
    return text[1:] if offset == 0 and text.startswith("\ufeff") else text


def split_lines(text: str) -> list[tuple[str, str]]:
    """The lines of `text` as ``(line, ending)`` pairs, ending ``"\\n"``, ``"\\r\\n"``, ``"\\r"`` or ``""`` (a
    last line without a line break); ``"".join(line + ending ...) == text``. Empty text has no line."""
    parts = LINE_BREAK.split(text)  # [line, ending, line, ending, ..., last line]
    lines = list(zip(parts[0::2], parts[1::2]))
    if parts[-1]:
        lines.append((parts[-1], ""))
    return lines


def collect_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (recursively, sorted, hidden files skipped) into a list of files.

    Raises CharformerError for a missing path or a folder with no files.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise CharformerError(f"{p}: folder contains no files")
            files.extend(found)
        else:
            raise CharformerError(f"{p}: no such file or folder")
    return files


def read_corpus(paths: Sequence[str | Path]) -> str:
    """Concatenate the text of all files under `paths`, with a newline between files that lack one."""
    parts = []
    for f in collect_files(paths):
        text = read_text(f)
        parts.append(text if text.endswith(("\n", "\r")) or not text else text + "\n")
    return "".join(parts)


def encode_array(vocab: CharVocab, text: str) -> np.ndarray:
    """Encode text to a 1-D id array, uint16 if every id fits, else uint32."""
    dtype = np.uint16 if len(vocab) <= 2**16 else np.uint32
    return np.array(vocab.encode(text), dtype=dtype)


def split_corpus(text: str, val_fraction: float) -> tuple[str, str]:
    """Split off the last `val_fraction` of the characters as validation text."""
    if not 0 < val_fraction < 1:
        raise CharformerError(f"val_fraction must be in (0, 1), got {val_fraction}")
    cut = int(len(text) * (1 - val_fraction))
    return text[:cut], text[cut:]


def random_windows(
    tokens: np.ndarray, block_size: int, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `batch_size` random windows: inputs x and next-character targets y, both ``(batch_size, block_size)``
    int64. Uses `generator` only, so a restored generator state reproduces the same batches."""
    if len(tokens) < block_size + 1:
        raise CharformerError(f"text of {len(tokens)} characters is shorter than one block of {block_size + 1}")
    starts = torch.randint(len(tokens) - block_size, (batch_size,), generator=generator).tolist()
    x = torch.from_numpy(np.stack([tokens[s : s + block_size] for s in starts]).astype(np.int64))
    y = torch.from_numpy(np.stack([tokens[s + 1 : s + 1 + block_size] for s in starts]).astype(np.int64))
    return x, y


def sequential_windows(tokens: np.ndarray, block_size: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Cover the whole text in consecutive windows, so each of the ``len(tokens) - 1`` targets is scored
    exactly once. The last window may be short: its missing targets are `IGNORE_INDEX` (inputs padded with 0).
    Yields (x, y), each ``(<= batch_size, block_size)`` int64."""
    n_targets = len(tokens) - 1
    starts = list(range(0, n_targets, block_size))
    for i in range(0, len(starts), batch_size):
        x = torch.zeros(len(starts[i : i + batch_size]), block_size, dtype=torch.int64)
        y = torch.full_like(x, IGNORE_INDEX)
        for row, s in enumerate(starts[i : i + batch_size]):
            n = min(block_size, n_targets - s)
            x[row, :n] = torch.from_numpy(tokens[s : s + n].astype(np.int64))
            y[row, :n] = torch.from_numpy(tokens[s + 1 : s + 1 + n].astype(np.int64))
        yield x, y


def pad_sequences(seqs: Sequence[Sequence[int]], pad: int = PAD_ID, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id sequences into ``(len(seqs), width)`` int64 (width default: the longest) with `pad`;
    also return their lengths ``(len(seqs),)`` int64."""
    width = max((len(s) for s in seqs), default=0) if width is None else width
    out = torch.full((len(seqs), width), pad, dtype=torch.int64)
    for row, s in enumerate(seqs):
        out[row, : len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
    return out, torch.tensor([len(s) for s in seqs], dtype=torch.int64)


def consecutive_blocks(tokens: np.ndarray, block_size: int) -> list[np.ndarray]:
    """Cut the text into consecutive blocks of `block_size` ids (the last one may be shorter), so every
    character is in exactly one block."""
    return [tokens[s : s + block_size] for s in range(0, len(tokens), block_size)]


def line_segments(text: str, vocab: CharVocab, max_len: int) -> list[np.ndarray]:
    """Encode each non-empty line of `text` (`split_lines`: the line endings are not part of a segment) and cut
    lines longer than `max_len` into consecutive pieces, so that no character is dropped. Returns the segments
    in text order."""
    segments = []
    for line, _ in split_lines(text):
        if line:
            ids = encode_array(vocab, line)
            segments.extend(ids[s : s + max_len] for s in range(0, len(ids), max_len))
    return segments


def pack_segments(segments: Sequence[np.ndarray], first: int, block_size: int) -> list[int]:
    """Segments ``first, first + 1, ...`` joined by ``[SEP]`` for as long as the next one still fits in
    `block_size` ids (at least the first one, which must itself fit)."""
    ids = segments[first].tolist()
    nxt = first + 1
    while nxt < len(segments) and len(ids) + 1 + len(segments[nxt]) <= block_size:
        ids += [SEP_ID, *segments[nxt].tolist()]
        nxt += 1
    return ids


def packed_blocks(segments: Sequence[np.ndarray], block_size: int) -> list[list[int]]:
    """Pack every segment, in order, into blocks (`pack_segments` greedily): each segment is in exactly one
    block, so a fixed evaluation set covers the text once."""
    blocks, i = [], 0
    while i < len(segments):
        block = pack_segments(segments, i, block_size)
        i += block.count(SEP_ID) + 1  # segments hold character ids only, so each [SEP] joins one more segment
        blocks.append(block)
    return blocks


def random_packed(segments: Sequence[np.ndarray], block_size: int, batch_size: int,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` blocks, each packed from a random segment onwards: ids ``(batch_size, block_size)`` int64
    right-padded with ``[PAD]``, and lengths ``(batch_size,)``. Uses `generator` only."""
    if not segments:
        raise CharformerError("no non-empty lines to pack")
    firsts = torch.randint(len(segments), (batch_size,), generator=generator).tolist()
    return pad_sequences([pack_segments(segments, f, block_size) for f in firsts], width=block_size)
