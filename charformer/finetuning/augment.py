"""Data augmentation for character tasks, labels kept consistent by construction.

Each augmentation makes one new example from each training example (or pair of examples), drawn with a seeded
random generator; the new examples are added to the training set (so an epoch grows with them), the
originals stay.

Classification (Wei & Zou 2019, "EDA: Easy Data Augmentation Techniques for Boosting Performance on Text
Classification", at the character level; the label is the original's):

    delete   each character dropped with probability p (at least one kept)
    swap     n = max(1, p x length) swaps of two random characters
    insert   n insertions of characters drawn from the training texts' most frequent ones
    mix      the text followed by another training text of the same label (texts mixed, label unchanged)

Named-entity recognition (Dai & Adel 2020, "An Analysis of Simple Data Augmentation for Named Entity
Recognition", mention replacement):

    entity   every entity replaced by an entity of the same type drawn from the training set's own entities;
             the spans are moved with the text, so each still covers exactly its entity

Word segmentation (sentences as lists of words, so the words still join to the text):

    concat   a sentence followed by another, their word lists joined
    split    a sentence of two or more words cut at a word boundary drawn at random into two sentences

A text too short for an edit (one character, one word) gives no new example; that count is reported.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Callable, Sequence

from ..errors import CharformerError
from ..tasks.readers import Document, Sentence

EDIT_SHARE = 0.1  # p: share of characters an edit touches (EDA's alpha)
FREQUENT_CHARS = 100  # insertions draw from this many most frequent training characters


def delete_chars(text: str, rng: random.Random, p: float = EDIT_SHARE) -> str | None:
    """`text` with each character deleted with probability `p` (EDA's random deletion, Wei & Zou 2019); one
    random character if all were deleted; None for a text under 2 characters (nothing to learn from)."""
    if len(text) < 2:
        return None
    kept = [c for c in text if rng.random() >= p]
    return "".join(kept) if kept else rng.choice(text)


def swap_chars(text: str, rng: random.Random, p: float = EDIT_SHARE) -> str | None:
    """`text` with round(p x length) (at least 1) swaps of two random positions (EDA's random swap); None for a
    text under 2 characters."""
    if len(text) < 2:
        return None
    chars = list(text)
    for _ in range(max(1, round(p * len(chars)))):
        i, j = rng.sample(range(len(chars)), 2)
        chars[i], chars[j] = chars[j], chars[i]
    return "".join(chars)


def insert_chars(text: str, rng: random.Random, frequent: Sequence[str], p: float = EDIT_SHARE) -> str:
    """`text` with round(p x length) (at least 1) characters drawn from `frequent` inserted at random positions
    (EDA's random insertion, with frequent training characters in place of synonyms)."""
    chars = list(text)
    for _ in range(max(1, round(p * len(chars)))):
        chars.insert(rng.randint(0, len(chars)), rng.choice(frequent))
    return "".join(chars)


def augment_documents(docs: Sequence[Document], name: str, rng: random.Random) -> list[Document]:
    """One new document per document of `docs` under augmentation `name` (see the module docstring)."""
    if name == "mix":
        by_label: dict[str, list[Document]] = {}
        for d in docs:
            by_label.setdefault(d.label, []).append(d)
        return [Document(d.text + other.text, d.label, f"{d.where}+{other.where} (mix)")
                for d in docs for other in [rng.choice(by_label[d.label])]]
    frequent = [c for c, _ in Counter(c for d in docs for c in d.text).most_common(FREQUENT_CHARS)]
    edit: Callable[[str], str | None] = {
        "delete": lambda t: delete_chars(t, rng), "swap": lambda t: swap_chars(t, rng),
        "insert": lambda t: insert_chars(t, rng, frequent)}[name]
    out = []
    for d in docs:
        text = edit(d.text)
        if text is not None:
            out.append(Document(text, d.label, f"{d.where} ({name})"))
    return out


def _words(s: Sentence) -> list[str]:
    return [s.text[a:b] for a, b, _ in sorted(s.spans)]


def _from_words(words: Sequence[str], where: str) -> Sentence:
    spans, start = [], 0
    for w in words:
        spans.append((start, start + len(w), ""))
        start += len(w)
    return Sentence("".join(words), tuple(spans), where)


def replace_entities(s: Sentence, entities: dict[str, list[str]], rng: random.Random) -> Sentence | None:
    """`s` with each entity replaced by one of `entities[type]`; the text outside the entities is unchanged."""
    if not s.spans:
        return None
    text, spans, last = [], [], 0
    for start, end, kind in sorted(s.spans):
        text.append(s.text[last:start])
        new = rng.choice(entities[kind])
        at = sum(len(t) for t in text)
        spans.append((at, at + len(new), kind))
        text.append(new)
        last = end
    text.append(s.text[last:])
    return Sentence("".join(text), tuple(spans), f"{s.where} (entity)")


def augment_sentences(sentences: Sequence[Sentence], name: str, rng: random.Random) -> list[Sentence]:
    """New sentences from `sentences` under augmentation `name` (see the module docstring)."""
    if name == "entity":
        entities: dict[str, list[str]] = {}
        for s in sentences:
            for a, b, kind in s.spans:
                entities.setdefault(kind, []).append(s.text[a:b])
        return [new for s in sentences if (new := replace_entities(s, entities, rng)) is not None]
    if name == "concat":
        return [_from_words(_words(s) + _words(other), f"{s.where}+{other.where} (concat)")
                for s in sentences for other in [rng.choice(sentences)]]
    out = []  # split
    for s in sentences:
        words = _words(s)
        if len(words) >= 2:
            cut = rng.randint(1, len(words) - 1)
            out += [_from_words(words[:cut], f"{s.where} (split 1)"), _from_words(words[cut:], f"{s.where} (split 2)")]
    return out


AUGMENTATIONS = {"classify": ("delete", "swap", "insert", "mix"), "ner": ("entity",), "cws": ("concat", "split")}


def parse_augmentations(task: str, names: str) -> list[str]:
    """The comma-separated augmentation `names` checked against those of `task`; raises ValueError."""
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    allowed = AUGMENTATIONS.get(task, ())
    wrong = [n for n in chosen if n not in allowed]
    if wrong:
        raise ValueError(f"augmentation {', '.join(wrong)} is not for --task {task} (available: "
                         f"{', '.join(allowed) or 'none'})")
    return chosen


def augment(task: str, examples: Sequence, names: str, seed: int) -> tuple[list, dict[str, int]]:
    """`examples` (Documents for classify, Sentences for cws and ner) followed by the new examples of each
    augmentation in the comma-separated `names`, and how many each made. Raises CharformerError for a name
    that is not one of the task's."""
    try:
        chosen = parse_augmentations(task, names)
    except ValueError as e:
        raise CharformerError(f"--augment: {e}") from None
    rng = random.Random(seed)
    out, made = list(examples), {}
    for name in chosen:
        new = augment_documents(examples, name, rng) if task == "classify" else augment_sentences(examples, name, rng)
        out += new
        made[name] = len(new)
    return out, made
