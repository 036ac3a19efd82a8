"""Multi-criteria word segmentation: one model for several segmentation standards, told apart by a marker.

Corpora disagree on what a word is (one standard writes 中国 人民 where another writes 中国人民); a model trained
on their union would learn a blur of the standards. Following Chen et al. 2017 ("Adversarial Multi-Criteria
Learning for Chinese Word Segmentation") and He et al. 2018 ("Effective Neural Solution for Multi-Criteria Word
Segmentation"), one shared encoder learns them all, and each sentence starts with a reserved *criterion marker*
that says which standard its tags follow; at inference the user chooses the standard by choosing the marker:

    position     0          1   2   3   4
    input        <ctb6>     中  国  人  民          (the marker's own tag position is not scored, nor output)
    tags                    B   E   B   E

The pretrained body's vocabulary has no marker tokens, and growing it would change the body (and break an
adapter's binding to its base). So the markers are a small embedding table of their own, one learned row per
standard (`CriterionMarkers`), created at fine-tune time and saved in the task checkpoint beside the head, with
the standards' names in its task description (``"standards"``). The row goes in place of position 0's character
embedding (`CharTransformer.hidden_states(first=...)`), so a marked sentence of a block is ``block_size - 1``
characters and every window carries its marker.

Batches mix the corpora row by row. Corpus k of n_k training pieces is drawn with probability proportional to
``n_k ** (1 / temperature)`` (`mix_shares`), the temperature-smoothed sampling of multilingual translation
(Arivazhagan et al. 2019, "Massively Multilingual Neural Machine Translation in the Wild"; T = 5
there): T = 1 draws in proportion to size, as if the corpora were one file; T = inf gives every corpus the same
share, however small. The best checkpoint is the one with the best mean dev F1 over the standards, so a
standard with a small dev set counts as much as a large one.

Command lines name each corpus by its standard: ``finetune.py --task cws --train ctb6=PATH --train udc=PATH
...`` (`parse_corpora`); ``python -m charformer.segment --ckpt DIR --standard ctb6`` (`choose_standard`).
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn as nn

from ..errors import CharformerError
from ..vocab import CLS_ID

MIX_TEMPERATURE = 5.0  # Arivazhagan et al. 2019's choice
STANDARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # what may stand before the '=' of NAME=PATH


def parse_corpora(option: str, values: str | Sequence[str]) -> str | dict[str, str]:
    """The files given to `option` (``--train``, ...): one plain PATH (returned as it is), or NAME=PATH values,
    one per standard (a dict, in the order given). NAME is letters, digits, ``_``, ``.`` or ``-`` and starts with
    a letter or digit; a file whose name holds '=' can be given as ./NAME. Raises CharformerError for a
    mixture of the two forms, a NAME given twice, or several plain paths."""
    values = [values] if isinstance(values, str) else list(values)
    named = [v.split("=", 1) for v in values if "=" in v and STANDARD_NAME.fullmatch(v.split("=", 1)[0])]
    if not named:
        if len(values) > 1:
            raise CharformerError(f"--{option} given {len(values)} times: one PATH, or one NAME=PATH per standard "
                                  "(multi-criteria segmentation)")
        return values[0]
    if len(named) < len(values):
        raise CharformerError(f"--{option}: give every file as NAME=PATH (one per standard) or a single plain PATH, "
                              f"not both: {values}")
    corpora: dict[str, str] = {}
    for name, path in named:
        if name in corpora:
            raise CharformerError(f"--{option}: standard {name!r} given twice")
        corpora[name] = path
    return corpora


def check_same_standards(files: dict[str, str | dict[str, str] | None]) -> None:
    """Raise CharformerError unless the options in `files` (``{"train": ..., "dev": ..., "test": ...}``, each a
    plain path or NAME=PATH dict, `parse_corpora`) are all plain or all name the same standards."""
    kinds = {option: sorted(v) if isinstance(v, dict) else None for option, v in files.items()}
    if len({str(k) for k in kinds.values()}) > 1:
        shown = "; ".join(f"--{o} {'NAME=PATH for ' + ', '.join(k) if k else 'a plain PATH'}" for o, k in kinds.items())
        raise CharformerError(f"--train, --dev and --test must name the same standards (or all be plain paths): {shown}")


def mix_shares(sizes: Sequence[int], temperature: float = MIX_TEMPERATURE) -> list[float]:
    """Each corpus's share of the training rows: proportional to ``size ** (1 / temperature)`` (see the module
    docstring; ``math.inf``: equal shares). Raises ValueError for a temperature that is not > 0 or a size < 1."""
    if not temperature > 0 or any(n < 1 for n in sizes):
        raise ValueError(f"need a temperature > 0 and corpora of at least one piece, got {temperature}, {list(sizes)}")
    weights = [float(n) ** (1.0 / temperature) for n in sizes]
    return [w / sum(weights) for w in weights]


def choose_standard(standards: Sequence[str], name: str | None, where: str) -> str | None:
    """`name` checked against the standards a model was trained on (`where` names the model in errors).
    Raises CharformerError when a multi-criteria model gets no standard or one it does not know, or a
    single-standard model gets one."""
    if not standards:
        if name is not None:
            raise CharformerError(f"{where}: a single-standard segmenter; --standard {name} is only for a "
                                  "multi-criteria one (finetune.py --train NAME=PATH ...)")
        return None
    if name is None:
        raise CharformerError(f"{where}: a multi-criteria segmenter: choose its standard with --standard NAME "
                              f"(standard= in Python), one of {', '.join(standards)}")
    if name not in standards:
        raise CharformerError(f"{where}: no standard {name!r}; it knows {', '.join(standards)}")
    return name


def mean_scores(per_standard: dict[str, dict]) -> dict:
    """Segmentation scores averaged over the standards, each standard weighing the same (macro mean), with the
    per-standard scores under ``"standards"``. A recall that is None for a standard (no OOV word) is left out
    of its mean."""
    out: dict = {}
    for key in ("f1", "precision", "recall", "oov_recall", "iv_recall"):
        values = [s[key] for s in per_standard.values() if s[key] is not None]
        out[key] = sum(values) / len(values) if values else None
    return {**out, "standards": per_standard}


class CriterionMarkers(nn.Module):
    """One learned d_model-wide marker per standard, put in front of each sentence (see the module docstring)."""

    def __init__(self, standards: Sequence[str], d_model: int):
        super().__init__()
        if not standards or len(set(standards)) != len(standards):
            raise ValueError(f"need distinct standard names, got {list(standards)}")
        self.standards = list(standards)
        self.embedding = nn.Embedding(len(standards), d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)  # as the body's character embeddings

    def index(self, name: str) -> int:
        """The marker row of standard `name`; raises ValueError for a name the model was not trained on."""
        return self.standards.index(name)

    def hidden_states(self, body: nn.Module, ids: torch.Tensor, lengths: torch.Tensor,
                      standards: torch.Tensor) -> torch.Tensor:
        """The body's features ``(B, T, C)`` of characters ids ``(B, T)`` (T <= block_size - 1), each row read
        after the marker of its standard, ``standards`` ``(B,)`` int64; the marker's own position is cut off."""
        marked = torch.cat([torch.full_like(ids[:, :1], CLS_ID), ids], 1)  # position 0's id is never read
        hidden = body.hidden_states(marked, lengths=lengths + 1, first=self.embedding(standards))
        return hidden[:, 1:]


def marker_width(block_size: int, standards: Sequence[str]) -> int:
    """Characters per row of a model of `block_size`: one fewer when each row starts with a marker."""
    return block_size - 1 if standards else block_size

