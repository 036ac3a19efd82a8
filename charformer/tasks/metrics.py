"""Evaluation metrics of the fine-tuning tasks.

* Word segmentation, as the SIGHAN bakeoff scorer counts it (Emerson 2005): a predicted word is correct when
  the same characters form a word in the gold segmentation at the same place, i.e. words compared as character
  spans. Precision = correct / predicted words, recall = correct / gold words, F1 their harmonic mean; OOV
  recall is the recall over gold words absent from the training word list, IV recall over the others.
* NER: entity-level micro precision / recall / F1 (an entity counts only with exact boundaries and type, as in
  the CoNLL-2003 evaluation), and the same per type.
* Classification: accuracy, macro-F1 (the mean of per-class F1 over the classes present in gold or
  prediction) and the confusion matrix (rows gold, columns predicted).

Ratios with a zero denominator are 0.0, except OOV / IV recall with no such words, which are None.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

from .schemes import Span, words_to_spans


def prf(correct: int, predicted: int, gold: int) -> dict[str, float]:
    """Precision, recall and F1 from counts."""
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def cws_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], train_words: Iterable[str]) -> dict:
    """Word P/R/F1 and OOV/IV recall of segmentations `pred` against `gold` (lists of word lists, one per
    sentence). Raises ValueError if a sentence's words do not spell the same characters in both."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    vocab = set(train_words)
    correct = n_gold = n_pred = 0
    hits, totals = Counter(), Counter()  # keys "iv" / "oov"
    for i, (g, p) in enumerate(zip(gold, pred)):
        if "".join(g) != "".join(p):
            raise ValueError(f"sentence {i}: the predicted words do not spell the gold characters")
        predicted = {(s, e) for s, e, _ in words_to_spans(p)}
        n_gold, n_pred = n_gold + len(g), n_pred + len(p)
        for word, (s, e, _) in zip(g, words_to_spans(g)):
            kind = "iv" if word in vocab else "oov"
            totals[kind] += 1
            if (s, e) in predicted:
                hits[kind] += 1
                correct += 1
    return {**prf(correct, n_pred, n_gold),
            "oov_recall": hits["oov"] / totals["oov"] if totals["oov"] else None,
            "iv_recall": hits["iv"] / totals["iv"] if totals["iv"] else None,
            "oov_rate": totals["oov"] / n_gold if n_gold else 0.0,
            "gold_words": n_gold, "predicted_words": n_pred}


def entity_scores(gold: Sequence[Iterable[Span]], pred: Sequence[Iterable[Span]]) -> dict:
    """Micro P/R/F1 over typed spans, and ``per_type``: {type: P/R/F1 with gold and predicted counts}."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    correct, n_gold, n_pred = Counter(), Counter(), Counter()
    for g, p in zip(gold, pred):
        g, p = set(g), set(p)
        for spans, counter in ((g, n_gold), (p, n_pred), (g & p, correct)):
            counter.update(t for _, _, t in spans)
    per_type = {t: {**prf(correct[t], n_pred[t], n_gold[t]), "gold": n_gold[t], "predicted": n_pred[t]}
                for t in sorted(n_gold | n_pred)}
    total = prf(sum(correct.values()), sum(n_pred.values()), sum(n_gold.values()))
    return {**total, "gold_entities": sum(n_gold.values()), "predicted_entities": sum(n_pred.values()),
            "per_type": per_type}


def classification_scores(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, macro-F1, per-class F1, and the confusion matrix ``{"labels", "matrix"}`` with
    ``matrix[i][j]`` = texts of gold class ``labels[i]`` predicted as ``labels[j]``. Classes outside `labels`
    are added at the end (sorted)."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold labels but {len(pred)} predicted")
    labels = list(labels) + sorted((set(gold) | set(pred)) - set(labels))
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, pred):
        matrix[index[g]][index[p]] += 1
    present = [label for label in labels if label in set(gold) | set(pred)]
    per_class = {label: prf(matrix[index[label]][index[label]], sum(row[index[label]] for row in matrix),
                            sum(matrix[index[label]]))["f1"] for label in present}
    return {"accuracy": sum(g == p for g, p in zip(gold, pred)) / len(gold) if gold else 0.0,
            "macro_f1": sum(per_class.values()) / len(per_class) if per_class else 0.0,
            "per_class_f1": per_class,
            "confusion": {"labels": labels, "matrix": matrix}}
