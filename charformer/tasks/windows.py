"""Inputs longer than the model's block: overlapping windows, stitched so every character gets one prediction.

A sentence of n > size characters is covered by windows of `size` characters whose starts are ``size -
overlap`` apart (the last one ends at n). Where two windows overlap, each character is taken from the window in
which it sits further from the edge, so it is predicted with at least ``overlap // 2`` characters of context on
both sides (except at the ends of the sentence); the kept parts partition ``[0, n)``:

    chars      0 ........................................... n
    windows    [-------------)
                        [-------------)
                                 [-------------)    (last window aligned to n)
    kept       [-----------)[------------)[------------------)

Training may cut long sentences into pieces instead (`training_pieces`), at span boundaries where possible so
that no word or entity is split; classification cuts texts into consecutive chunks (`chunks`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence

from .schemes import Span


@dataclass(frozen=True)
class Window:
    """Characters ``[start, end)`` go through the model; ``[keep_start, keep_end)`` of them are kept."""

    start: int
    end: int
    keep_start: int
    keep_end: int


def plan_windows(n: int, size: int, overlap: int) -> list[Window]:
    """Windows over n characters (see the module docstring). Raises ValueError unless ``0 <= overlap < size``.
    n = 0 gives no window."""
    if not 0 <= overlap < size:
        raise ValueError(f"need 0 <= overlap < window size, got overlap={overlap}, size={size}")
    if n <= size:
        return [Window(0, n, 0, n)] if n else []
    starts = list(range(0, n - size, size - overlap)) + [n - size]
    windows = []
    for i, start in enumerate(starts):
        keep_start = 0 if i == 0 else windows[-1].keep_end
        # cut halfway through the overlap with the next window
        keep_end = n if i == len(starts) - 1 else (starts[i + 1] + start + size) // 2
        windows.append(Window(start, start + size, keep_start, keep_end))
    return windows


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, end)`` chunks of at most `size` characters covering ``[0, n)`` (none for n = 0)."""
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def training_pieces(spans: Sequence[Span], n: int, size: int) -> list[tuple[int, int]]:
    """Cut n characters into consecutive pieces of at most `size`, each ending at the last position within reach
    that is not inside a span (a word or entity boundary, or an O character); a span longer than `size` is cut
    where it must be (`clip_spans` then shortens it)."""
    inside = [False] * (n + 1)  # inside[p]: a span covers both p - 1 and p, so cutting before p would split it
    for start, end, _ in spans:
        for p in range(start + 1, end):
            inside[p] = True
    pieces, start = [], 0
    while start < n:
        end = min(start + size, n)
        cut = next((p for p in range(end, start, -1) if not inside[p]), end) if end < n else n
        pieces.append((start, cut))
        start = cut
    return pieces


def clip_spans(spans: Sequence[Span], start: int, end: int) -> list[Span]:
    """The spans' parts inside ``[start, end)``, shifted so that `start` is position 0. `spans` are in order and
    do not overlap (as the readers give them), so the first one that reaches past `start` is found by bisection:
    cutting a sentence into pieces then costs O(n log n), not O(pieces x spans) (minutes for a 100,000-character
    line)."""
    clipped = []
    for i in range(bisect.bisect_right(spans, start, key=lambda span: span[1]), len(spans)):
        s, e, t = spans[i]
        if s >= end:
            break
        clipped.append((max(s, start) - start, min(e, end) - start, t))
    return clipped
