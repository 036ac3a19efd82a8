"""Readers for the fine-tuning file formats. Every error names the file and the line (a bad UTF-8 byte: the
byte offset, through `charformer.data.read_text`); nothing with content is ever skipped silently.

Encoding, byte-order mark and line endings (LF, CRLF or a lone CR) follow `charformer.data`; a line ending is
never part of a line's text.

* Segmented text (CWS): one sentence per line, words separated by runs of one separator, ASCII space U+0020 by
  default. Only that character separates: U+3000 and U+00A0 stay inside words (the Weibo corpus has them
  there), unlike Python's ``str.split()``. Lines that are empty or all whitespace hold no sentence and are
  skipped.
* CoNLL columns (NER): one ``CHAR TAG`` per line (tab- or space-separated), a blank line between sentences,
  tags in BIO, BIOES or BMES. CHAR is one code point: a letter written with a combining mark (``e`` + U+0301)
  is two, which an error names (NFC normalization composes most such pairs into one). Weibo NER writes each
  character followed by its position in a word (``叔0``, ``p10``): ``token_format="char+position"`` strips the
  number (a character the source lost appears as several U+FFFD and is read as one U+FFFD); ``"auto"`` decides
  from the file's first token.
* Delimited (classification): TSV (quoting off: the texts contain ``"``) or CSV (the csv module's quoting),
  a label column and a text column chosen by header name or 0-based index; a header row is detected.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from ..data import read_text, split_lines
from ..errors import CharformerError, excerpt
from .schemes import Span, split_tag, tags_to_spans, words_to_spans

TOKEN_FORMATS = ("auto", "char", "char+position")
HEADER_NAMES = ("label", "labels", "class", "category", "sentiment", "target", "y")  # what a label header may be
TEXT_NAMES = ("text_a", "text", "sentence", "review", "content")  # tried in order when the text column is "auto"
_POSITION_TOKEN = re.compile(r"(\ufffd+|.)([0-9]+)", re.DOTALL)


@dataclass(frozen=True)
class Sentence:
    """A tagged sentence: its characters, its spans (words or entities), the raw tags if the file had tags, and
    where it starts (``FILE:LINE``)."""

    text: str
    spans: tuple[Span, ...]
    where: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Document:
    """A labelled text for classification, and where it is (``FILE:LINE``)."""

    text: str
    label: str
    where: str


def parse_separator(sep: str) -> str:
    """A word separator given literally (``" "``) or as a code point (``"U+3000"``). Raises CharformerError if
    empty."""
    if re.fullmatch(r"[Uu]\+[0-9A-Fa-f]{4,6}", sep):
        sep = chr(int(sep[2:], 16))
    if not sep:
        raise CharformerError("the word separator must not be empty")
    return sep


def read_cws(path: str | Path, sep: str = " ") -> list[Sentence]:
    """Read a segmented corpus (see the module docstring). Raises CharformerError for a file that is not UTF-8 or
    holds no sentence."""
    sep = parse_separator(sep)
    sentences = []
    for lineno, (line, _) in enumerate(split_lines(read_text(path)), 1):
        words = [w for w in line.split(sep) if w]
        if words and not line.isspace():
            sentences.append(Sentence("".join(words), tuple(words_to_spans(words)), f"{path}:{lineno}"))
    if not sentences:
        raise CharformerError(f"{path}: no sentences (every line is empty or whitespace)")
    return sentences


def _token_char(token: str, token_format: str, where: str) -> str:
    if token_format == "char":
        if len(token) != 1:
            codes = " ".join(f"U+{ord(c):04X}" for c in token[:8])
            hint = (" (Weibo-style tokens, a character followed by its word position, need --token-format "
                    "char+position)" if _POSITION_TOKEN.fullmatch(token) else "")
            raise CharformerError(f"{where}: token {excerpt(token)} is not one character: {len(token)} code points "
                                  f"({codes}){hint}")
        return token
    match = _POSITION_TOKEN.fullmatch(token)
    if not match:
        raise CharformerError(f"{where}: token {excerpt(token)} is not one character followed by its word-position "
                              "number")
    return match.group(1)[0]


def read_conll(path: str | Path, token_format: str = "auto") -> list[Sentence]:
    """Read a character-per-line tagged corpus (see the module docstring). Raises CharformerError naming
    ``FILE:LINE`` for a missing tag, extra columns, a token that is not one character (in its format), or a
    tag that is not B/I/M/E/S/O(-TYPE)."""
    if token_format not in TOKEN_FORMATS:
        raise CharformerError(f"token format must be one of {TOKEN_FORMATS}, got {token_format!r}")
    sentences: list[Sentence] = []
    chars: list[str] = []
    tags: list[str] = []
    start = 0

    def flush():
        if chars:
            sentences.append(Sentence("".join(chars), tuple(tags_to_spans(tags)), f"{path}:{start}", tuple(tags)))
            chars.clear()
            tags.clear()

    for lineno, (line, _) in enumerate(split_lines(read_text(path)), 1):
        where = f"{path}:{lineno}"
        if not line.strip(" \t"):
            flush()
            continue
        # With a tab, the columns are exactly what lies between tabs (the character may be a space); without
        # one, runs of spaces separate them.
        cols = line.split("\t") if "\t" in line else [c for c in line.split(" ") if c]
        if len(cols) == 1:
            raise CharformerError(f"{where}: missing tag (expected 'CHAR TAG', got {excerpt(line)})")
        if len(cols) > 2:
            raise CharformerError(f"{where}: {len(cols)} columns, expected 2 ('CHAR TAG'): {excerpt(line)}")
        token, tag = cols
        if token_format == "auto":
            token_format = "char+position" if len(token) > 1 and _POSITION_TOKEN.fullmatch(token) else "char"
        try:
            split_tag(tag)
        except ValueError as e:
            raise CharformerError(f"{where}: {e}") from None
        if not chars:
            start = lineno
        chars.append(_token_char(token, token_format, where))
        tags.append(tag)
    flush()
    if not sentences:
        raise CharformerError(f"{path}: no sentences (the file has no 'CHAR TAG' line)")
    return sentences


def _column(spec: str, header: list[str] | None, n_cols: int, what: str, where: str) -> int:
    """Index of the column `spec` (a header name or a 0-based index)."""
    if spec.isdigit():
        index = int(spec)
    elif header is not None and spec in header:
        index = header.index(spec)
    else:
        raise CharformerError(f"{where}: no {what} column {spec!r}" + (f" in the header {header}" if header else
                              " (the file has no header row: give the column as a 0-based index)"))
    if index >= n_cols:
        raise CharformerError(f"{where}: {what} column {index} does not exist (rows have {n_cols} columns)")
    return index


def read_labeled(path: str | Path, *, label_column: str = "label", text_column: str = "auto",
                 delimiter: str = "auto") -> list[Document]:
    """Read a classification file: TSV (default; ``delimiter="auto"`` picks CSV for a ``.csv`` file) or CSV.

    The first row is a header if it holds the label column's name (for an index: one of `HEADER_NAMES`).
    ``text_column="auto"``: with two columns, the one that is not the label; else the first of `TEXT_NAMES` in
    the header. Without a header, the default label column is 0 and the text the other of two columns.
    Blank lines are skipped. Raises CharformerError naming ``FILE:LINE`` for a row with another number of
    columns, an empty label or text, or a csv syntax error.
    """
    path = Path(path)
    if delimiter == "auto":
        delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    delimiter = {"tab": "\t", "comma": ","}.get(delimiter, delimiter)
    text = read_text(path)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    # StringIO(newline="") ends lines at \n, \r\n or \r only (str.splitlines would also split at U+2028 etc.)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    rows: list[tuple[int, list[str]]] = []
    line = 1
    try:
        for row in reader:
            if row:
                rows.append((line, row))
            line = reader.line_num + 1
    except csv.Error as e:
        raise CharformerError(f"{path}:{line}: {e}") from None
    if not rows:
        raise CharformerError(f"{path}: no rows")
    first = rows[0][1]
    if label_column.isdigit():
        has_header = int(label_column) < len(first) and first[int(label_column)].strip().lower() in HEADER_NAMES
    else:
        has_header = label_column in first
        if not has_header and label_column == "label" and len(first) == 2:
            label_column = "0"  # the default name, no header: the two-column layout "label, text"
    header = first if has_header else None
    n_cols = len(first)
    where = f"{path}:{rows[0][0]}"
    label_index = _column(label_column, header, n_cols, "label", where)
    if text_column == "auto":
        if n_cols == 2:
            text_index = 1 - label_index
        else:
            names = [n for n in TEXT_NAMES if header is not None and n in header]
            if not names:
                raise CharformerError(f"{where}: cannot tell which of {n_cols} columns is the text: give --text-column")
            text_index = header.index(names[0])
    else:
        text_index = _column(text_column, header, n_cols, "text", where)
    documents = []
    for lineno, row in rows[1:] if has_header else rows:
        where = f"{path}:{lineno}"
        if len(row) != n_cols:
            raise CharformerError(f"{where}: {len(row)} columns, expected {n_cols} like the first row")
        label, doc = row[label_index].strip(), row[text_index]
        if not label:
            raise CharformerError(f"{where}: empty label")
        if not doc:
            raise CharformerError(f"{where}: empty text")
        documents.append(Document(doc, label, where))
    if not documents:
        raise CharformerError(f"{path}: a header but no data rows")
    return documents
