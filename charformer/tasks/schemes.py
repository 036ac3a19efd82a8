"""Tagging schemes: spans of characters <-> one tag per character, and which tag may follow which.

A span is ``(start, end, type)`` over character positions, end exclusive: a word of a segmented sentence (type
``""``) or a typed entity (``"PER"``). Three schemes put one tag on every character:

    BIO     B-X on the first character of a span, I-X on the rest, O outside (Ramshaw & Marcus 1995)
    BIOES   S-X for a one-character span; else B-X, I-X ..., E-X; O outside (Ratinov & Roth 2009)
    BMES    BIOES with M for I. Word segmentation uses it without types or O (Xue 2003: 中国/B 人/E 民/S);
            the Resume NER corpus with types (B-ORG M-ORG E-ORG) and O.

`can_follow` states the grammar once: a continuation tag (I, M, E) must continue a span of its own type, and
under BIOES/BMES a span that has not ended (B, I, M) must be continued. The decoders' transition masks and
`is_valid` are both derived from it. Reading tags back (`tags_to_spans`) is lenient instead, like the CoNLL
evaluation script: it understands any of B I M E S O, and a continuation tag that continues nothing starts a
new span, so even a malformed gold sequence gives well-defined spans.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

PREFIXES = {"BIO": ("B", "I"), "BIOES": ("B", "I", "E", "S"), "BMES": ("B", "M", "E", "S")}
SCHEMES = tuple(PREFIXES)
ALL_PREFIXES = ("B", "I", "M", "E", "S", "O")
Span = tuple[int, int, str]  # [start, end) character positions and the span type ("" for words)


def make_tag(prefix: str, span_type: str) -> str:
    """``("B", "PER") -> "B-PER"``; an untyped span (a word) has the bare prefix: ``("B", "") -> "B"``."""
    return f"{prefix}-{span_type}" if span_type else prefix


def split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER.NAM" -> ("B", "PER.NAM")``, ``"S" -> ("S", "")``, ``"O" -> ("O", "")``.

    Raises ValueError for a prefix outside B I M E S O, or a typed O."""
    prefix, _, span_type = tag.partition("-")
    if prefix not in ALL_PREFIXES or (prefix == "O" and span_type):
        raise ValueError(f"not a B/I/M/E/S/O tag: {tag!r}")
    return prefix, span_type


def tag_set(scheme: str, types: Iterable[str], *, outside: bool = True) -> list[str]:
    """Every tag of `scheme` for the span `types`: ``O`` first (if `outside`), then per type (sorted) each prefix.
    Word segmentation: ``tag_set("BMES", [""], outside=False) == ["B", "M", "E", "S"]``."""
    return (["O"] if outside else []) + [make_tag(p, t) for t in sorted(set(types)) for p in PREFIXES[scheme]]


def spans_to_tags(spans: Iterable[Span], n: int, scheme: str) -> list[str]:
    """Tags of `n` characters under `scheme`; characters in no span get ``O``.

    Raises ValueError if spans overlap or fall outside ``[0, n)``."""
    tags = ["O"] * n
    inside = "M" if scheme == "BMES" else "I"
    last_end = 0
    for start, end, span_type in sorted(spans):
        if not last_end <= start < end <= n:
            raise ValueError(f"span {(start, end, span_type)} overlaps another or leaves [0, {n})")
        if scheme == "BIO":
            tags[start:end] = [make_tag("B", span_type)] + [make_tag(inside, span_type)] * (end - start - 1)
        elif end - start == 1:
            tags[start] = make_tag("S", span_type)
        else:
            tags[start:end] = ([make_tag("B", span_type)] + [make_tag(inside, span_type)] * (end - start - 2)
                               + [make_tag("E", span_type)])
        last_end = end
    return tags


def tags_to_spans(tags: Sequence[str]) -> list[Span]:
    """Spans of a tag sequence in any of the schemes (leniently, see the module docstring), in order."""
    spans: list[Span] = []
    start, current = None, ""
    for i, tag in enumerate(tags):
        prefix, span_type = split_tag(tag)
        continues = start is not None and prefix in ("I", "M", "E") and span_type == current
        if not continues:
            if start is not None:
                spans.append((start, i, current))
            start, current = (None, "") if prefix == "O" else (i, span_type)
        if prefix in ("E", "S") and start is not None:
            spans.append((start, i + 1, current))
            start = None
    if start is not None:
        spans.append((start, len(tags), current))
    return spans


def words_to_spans(words: Sequence[str]) -> list[Span]:
    """Untyped spans of consecutive words: ``["中国", "人"] -> [(0, 2, ""), (2, 3, "")]``."""
    spans, start = [], 0
    for word in words:
        spans.append((start, start + len(word), ""))
        start += len(word)
    return spans


def spans_to_words(text: str, spans: Iterable[Span]) -> list[str]:
    """The substrings of `text` that the spans cover, in order."""
    return [text[start:end] for start, end, _ in spans]


def can_follow(prev: str | None, tag: str, scheme: str) -> bool:
    """May `tag` come right after `prev` (None: at the start of a sentence) under `scheme`?"""
    prefix, span_type = split_tag(tag)
    if prefix != "O" and prefix not in PREFIXES[scheme]:
        return False
    prev_prefix, prev_type = split_tag(prev) if prev is not None else ("O", "")
    span_open = prev_prefix in ("B", "I", "M")  # the previous character is in a span that has not ended
    if prefix in ("I", "M", "E"):
        return span_open and prev_type == span_type
    return not span_open or scheme == "BIO"  # BIOES/BMES spans end only with E


def can_end(tag: str, scheme: str) -> bool:
    """May a sentence end with `tag`? (Under BIOES/BMES a span must be closed by E or S.)"""
    return scheme == "BIO" or split_tag(tag)[0] in ("E", "S", "O")


def is_valid(tags: Sequence[str], scheme: str) -> bool:
    """Whether a tag sequence obeys `scheme` throughout (empty sequences are valid)."""
    prev = None
    for tag in tags:
        if not can_follow(prev, tag, scheme):
            return False
        prev = tag
    return prev is None or can_end(prev, scheme)


def transition_masks(tags: Sequence[str], scheme: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Allowed starts ``(K,)``, transitions ``(K, K)`` (``[i, j]``: tag j may follow tag i) and ends ``(K,)``,
    bool, for the K tags in `tags`."""
    start = torch.tensor([can_follow(None, t, scheme) for t in tags])
    trans = torch.tensor([[can_follow(a, b, scheme) for b in tags] for a in tags])
    end = torch.tensor([can_end(t, scheme) for t in tags])
    return start, trans, end


def detect_scheme(tags: Iterable[str]) -> str:
    """The scheme a corpus's tags are written in: BMES if any M- appears, else BIOES if any E- or S-, else BIO."""
    prefixes = {split_tag(t)[0] for t in tags}
    if "M" in prefixes:
        return "BMES"
    return "BIOES" if prefixes & {"E", "S"} else "BIO"
