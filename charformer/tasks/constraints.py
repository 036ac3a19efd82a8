"""Constraints on the BMES tag lattice of word segmentation: user-dictionary words and unbreakable runs.

A segmentation is a path of BMES tags (`charformer.tasks.schemes`), decoded by Viterbi over per-character
scores. Adding a score bias ``(n, 4)`` to those scores before decoding steers the path; -inf on a tag removes
it from the lattice, so whatever the model says, no path through it is chosen (the grammar always leaves a
valid path, see below). Three kinds of constraint, combined into one bias by `lattice_bias`:

* **whole** (a dictionary word in ``force`` mode, span [s, e)): the word must come out as one word, so its
  tags are fixed: S for one character, else B at s, M inside, E at e - 1. B at s forces a boundary before it
  and E at e - 1 one after it, so no word of the output crosses its edges.
* **unbroken** (a protected run, [s, e)): no boundary inside, but the run may join its neighbours (CTB writes
  "1998年" as one word): positions s + 1 .. e - 1 cannot start a word (not B or S), positions s .. e - 2 cannot
  end one (not E or S).
* **bonus** (a dictionary word in ``prefer`` mode): the word's own tags (as for *whole*) get ``weight x
  bonus`` added to their scores (nats, on the log-probability or CRF-score scale); the model may still
  disagree where it is surer than the bonus. Protected runs stay hard constraints in this mode.

Every allowed set is non-empty and the constraints never contradict one another (dictionary matches do not
overlap, nor do protected runs, and a protected run that crosses the edge of a forced word is dropped, the
user's dictionary winning), so under the BMES grammar a valid path always exists: for example an unbroken run
starts with B or M, which may follow the E or S that ends the word before it.

**Protected runs** (`protected_spans`, on by default in `charformer.segment`): URLs, e-mail addresses, and
runs of Latin letters and digits, half- or full-width, joined by a hyphen, slash, apostrophe or a decimal
point ("COVID-19", "3.14", "2020-01-05", "１９９８", "GitHub"), or by a comma before exactly three digits (a
thousands separator, "1,000,000"; "1，2" is a list, and stays cuttable). Found by one regular expression, in
the order URL, e-mail, alphanumeric run, leftmost first.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch

from .lexicon import Lexicon

BMES = ("B", "M", "E", "S")
B, M, E, S = range(4)
MODES = ("force", "prefer")
DEFAULT_BONUS = 2.0  # nats per character of a dictionary word in prefer mode (weight 1)

_ALNUM = "0-9０-９A-Za-zＡ-Ｚａ-ｚ"
_DIGIT = "0-9０-９"
_URL_CHARS = r"A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%"
PROTECTED = re.compile(
    rf"(?i:https?://|ftp://|www\.)[{_URL_CHARS}]*[A-Za-z0-9\-_~/#=&%]"  # a URL, less trailing punctuation
    r"|[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+"  # an e-mail address
    rf"|[{_ALNUM}]+(?:(?:[-－/／.．'’]|[,，](?=[{_DIGIT}]{{3}}(?![{_ALNUM}])))[{_ALNUM}]+)*"  # alphanumeric run
)


def protected_spans(text: str) -> list[tuple[int, int]]:
    """The runs of `text` that must not be cut inside (see the module docstring), as ``(start, end)``, in order;
    one-character runs are left out (there is nothing to cut)."""
    return [m.span() for m in PROTECTED.finditer(text) if m.end() - m.start() > 1]


def word_tags(length: int) -> list[int]:
    """BMES tag indices of a word of `length` characters."""
    return [S] if length == 1 else [B] + [M] * (length - 2) + [E]


def runs_outside_words(runs: Sequence[tuple[int, int]], words: Sequence[tuple[int, int, float]]) -> list[tuple[int, int]]:
    """The unbroken `runs` that agree with the whole `words` (both in order, neither overlapping itself): those
    that touch no word or lie inside one. One merge pass, O(runs + words)."""
    kept, i = [], 0
    for s, e in runs:
        while i < len(words) and words[i][1] <= s:
            i += 1
        # words[i], if any, is the first word that ends after s: the only one that can hold the run
        if i == len(words) or words[i][0] >= e or (words[i][0] <= s and e <= words[i][1]):
            kept.append((s, e))
    return kept


def lattice_bias(text: str, *, lexicon: Lexicon | None = None, mode: str = "force", bonus: float = DEFAULT_BONUS,
                 protect: bool = True) -> torch.Tensor | None:
    """Score bias ``(len(text), 4)`` float32 over the BMES tags (B, M, E, S in that order) for `text`: -inf where
    a constraint forbids a tag, ``weight x bonus`` on the tags of a preferred word, 0 elsewhere; None when
    nothing applies. `mode` is ``force`` or ``prefer`` (raises ValueError otherwise)."""
    if mode not in MODES:
        raise ValueError(f"dictionary mode must be one of {MODES}, got {mode!r}")
    words = lexicon.matches(text) if lexicon is not None else []
    runs = protected_spans(text) if protect else []
    if mode == "force":
        runs = runs_outside_words(runs, words)
    if not words and not runs:
        return None
    n = len(text)
    bias = np.zeros((n, 4), dtype=np.float32)
    for s, e in runs:
        bias[s + 1 : e, [B, S]] = -np.inf  # no word starts inside the run
        bias[s : e - 1, [E, S]] = -np.inf  # and none ends inside it
    if words:
        # The words' tags and weights per position, built as lists (a numpy call per word would cost more
        # than the scan that found it), then applied in one indexing step.
        tags, weights = [-1] * n, [0.0] * n
        for s, e, weight in words:
            tags[s:e] = word_tags(e - s)
            weights[s:e] = [weight] * (e - s)
        tags = np.array(tags)
        positions = np.flatnonzero(tags >= 0)
        if mode == "force":  # the runs left inside a word allow its tags, so these overwrite nothing needed
            bias[positions] = -np.inf
            bias[positions, tags[positions]] = 0.0
        else:
            bias[positions, tags[positions]] += np.array(weights, dtype=np.float32)[positions] * bonus
    return torch.from_numpy(bias)
