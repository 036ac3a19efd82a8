"""User dictionaries for word segmentation: reading the file, and finding its words in a text.

A dictionary is a UTF-8 file with one word per line, optionally followed by a TAB and a weight:

    # company names                  <- a line whose first character is # is a comment
    深度求索
    COVID-19 疫苗	2.5                <- a word may hold spaces and punctuation; 2.5 is its weight

The rules of `charformer.data` apply (strict UTF-8, a leading byte-order mark dropped, lines ending at LF, CRLF
or CR). Blank lines are skipped; a word is stripped of surrounding whitespace (a word never starts or ends with
a space); a word that starts with ``#`` is written ``\\#...``. The weight is a finite number > 0 (default 1.0),
used by the ``prefer`` mode (`charformer.tasks.constraints`) as a multiplier of the bonus; a word listed twice
takes its last weight. A line with more than one TAB, an empty word or a weight that is not such a number is an
error naming the file and line.

Matching is *leftmost-longest without overlap*, as a lexer or a maximum-matching segmenter reads: scanning left
to right, at the first position where some dictionary word starts, take the longest such word, then carry on
after it. The words sit in a character trie (nested dicts, Fredkin 1960), so a scan costs one dict lookup per
position where no word starts and at most one per character of the longest candidate where one does: O(n x L)
for a text of n characters and words of up to L, independent of the number of words. (Aho-Corasick would make
it O(n) whatever L, but leftmost-longest matching still has to look ahead to the end of the longest candidate,
and dictionary words are short.)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping

from ..data import read_text, split_lines
from ..errors import CharformerError, excerpt

_END = ""  # trie key of a node where a word ends (its weight); no character is the empty string


class Lexicon:
    """A set of words with weights, and their leftmost-longest matches in a text. Raises ValueError for an empty
    word or a weight that is not a finite number > 0."""

    def __init__(self, words: Mapping[str, float] | Iterable[str]):
        weights = dict(words) if isinstance(words, Mapping) else dict.fromkeys(words, 1.0)
        self.root: dict = {}
        for word, weight in weights.items():
            if not word:
                raise ValueError("a dictionary word cannot be empty")
            if not (math.isfinite(weight) and weight > 0):
                raise ValueError(f"the weight of {word!r} must be a finite number > 0, got {weight!r}")
            node = self.root
            for char in word:
                node = node.setdefault(char, {})
            node[_END] = float(weight)
        self.size = len(weights)

    def __len__(self) -> int:
        return self.size

    def matches(self, text: str) -> list[tuple[int, int, float]]:
        """The leftmost-longest non-overlapping occurrences in `text` as ``(start, end, weight)``, end exclusive,
        in order (see the module docstring)."""
        found, i, n, root = [], 0, len(text), self.root
        while i < n:
            node, j, best = root.get(text[i]), i, None
            while node is not None:
                j += 1
                if _END in node:
                    best = (i, j, node[_END])
                node = node.get(text[j]) if j < n else None
            if best is None:
                i += 1
            else:
                found.append(best)
                i = best[1]
        return found


def parse_line(line: str) -> tuple[str, float] | None:
    """One dictionary line as ``(word, weight)``, or None for a blank or comment line. Raises ValueError."""
    if not line.strip() or line.startswith("#"):
        return None
    word, *rest = line.split("\t")
    if len(rest) > 1:
        raise ValueError(f"expected WORD or WORD<TAB>WEIGHT, found {len(rest)} TABs: {excerpt(line)}")
    word = word.strip()
    if word.startswith("\\#"):
        word = word[1:]
    if not word:
        raise ValueError(f"no word before the TAB: {excerpt(line)}")
    if not rest:
        return word, 1.0
    try:
        weight = float(rest[0])
    except ValueError:
        raise ValueError(f"the weight {rest[0]!r} is not a number") from None
    if not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"the weight must be a finite number > 0, got {rest[0]!r}")
    return word, weight


def read_lexicon(path: str | Path) -> Lexicon:
    """The dictionary file at `path` (format in the module docstring). Raises CharformerError ``FILE:LINE: ...``
    for a malformed line, a file that is not UTF-8 or does not exist."""
    words: dict[str, float] = {}
    for number, (line, _) in enumerate(split_lines(read_text(path)), 1):
        try:
            entry = parse_line(line)
        except ValueError as e:
            raise CharformerError(f"{path}:{number}: {e}") from None
        if entry is not None:
            words[entry[0]] = entry[1]
    return Lexicon(words)
