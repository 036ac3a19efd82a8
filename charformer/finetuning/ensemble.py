"""Ensembles: several fine-tuned checkpoints of one task answering together, by averaging their probabilities.

Averaging the predictive distributions of independently trained networks (Lakshminarayanan et al. 2017, "Simple
and Scalable Predictive Uncertainty Estimation using Deep Ensembles"; Hansen & Salamon 1990 for the majority
vote) lowers the variance that one fine-tuning run carries from its seed, its data order and its head's
initialisation:

    classification   P(label | text) = mean over members of each member's softmax
    tagging          P(tag at character t) = mean over members of each member's per-character softmax;
                     the mean marginals are then decoded with the tagging scheme's constrained Viterbi

Members may have different vocabularies and architectures (each reads the text its own way) but must predict
the same labels, or the same tag set under the same scheme. A CRF tagger's per-character softmax is not its
marginal distribution (that needs the forward-backward algorithm), so CRF taggers are refused in an ensemble;
one CRF checkpoint alone is decoded by its own CRF as always.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import CharformerError
from ..tasks.predict import classify_texts, decode_tag_scores, predict_tag_scores, predict_tags

Member = tuple  # (model, vocab, task description), as `charformer.tasks.tool.load_for` returns


def check_members(members: Sequence[Member], names: Sequence[str]) -> None:
    """Raise CharformerError unless the members predict the same labels (classify) or tags (cws, ner), and are
    not CRF taggers when there are several."""
    if len(members) < 2:
        return
    first = members[0][2]
    key = "labels" if first["task"] == "classify" else "tags"
    for (_, _, task), name in zip(members[1:], names[1:]):
        if task.get(key) != first.get(key) or task.get("scheme") != first.get("scheme"):
            raise CharformerError(f"{name}: its {key} {task.get(key)} differ from {names[0]}'s {first.get(key)}: an "
                                  "ensemble averages distributions over the same outputs")
    crf = [name for (_, _, task), name in zip(members, names) if task.get("crf")]
    if crf:
        raise CharformerError(f"{', '.join(crf)}: CRF taggers cannot be averaged per character (see "
                              "charformer.finetuning.ensemble); use softmax taggers or one checkpoint")


def ensemble_label_probs(members: Sequence[Member], texts: Sequence[str], *, batch_size: int,
                         progress: bool = False) -> torch.Tensor:
    """Label probabilities ``(len(texts), L)`` of non-empty texts: the mean of the members' (one member: its own)."""
    probs = [classify_texts(model, vocab, texts, batch_size=batch_size, progress=progress)
             for model, vocab, _ in members]
    return torch.stack(probs).mean(0)


def ensemble_tag_paths(members: Sequence[Member], texts: Sequence[str], *, batch_size: int, overlap: int,
                       progress: bool = False, bias: Sequence[torch.Tensor | None] | None = None,
                       standard: str | None = None) -> list[list[int]]:
    """Tag-index paths of `texts`: decoded from the members' mean per-character probabilities (one member: by
    its own decoder, CRF included). `bias`, if given, holds per text None or an ``(n_i, K)`` score bias for the
    decoder (`charformer.tasks.predict.decode_tag_scores`), e.g. a user dictionary's constraints. `standard`:
    the segmentation standard every member (multi-criteria segmenters, `charformer.tasks.criteria`) follows."""
    if len(members) == 1:
        model, vocab, _ = members[0]
        return predict_tags(model, [vocab.encode_aligned(t) for t in texts], batch_size=batch_size, overlap=overlap,
                            progress=progress, bias=bias, standard=standard)
    mean = None
    for model, vocab, _ in members:
        scores = predict_tag_scores(model, [vocab.encode_aligned(t) for t in texts], batch_size=batch_size,
                                    overlap=overlap, progress=progress, standard=standard)
        probs = [s.softmax(-1) / len(members) for s in scores]
        mean = probs if mean is None else [a + b for a, b in zip(mean, probs)]
    # log of normalised probabilities: the softmax decoder's log_softmax leaves them as they are
    return decode_tag_scores(members[0][0].head, [p.clamp_min(1e-30).log() for p in mean], bias)
