"""Batched prediction with a task model, shared by the dev evaluation of `charformer.tasks.objectives` and the
command-line tools `charformer.segment`, `.tag` and `.classify`.

Every sentence is predicted whole, stitching windows where it is longer than a block (`windows.plan_windows`),
so each character gets exactly one tag; a text to classify is read whole, in chunks (`windows.chunks`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..data import pad_sequences
from ..vocab import CLS_ID, CharVocab
from .heads import Classifier, Tagger
from .schemes import tags_to_spans
from .windows import chunks, plan_windows

# Padded character positions per Viterbi call in `predict_tags`. Decoding steps through time in Python, a few
# small ops per position of the longest sentence, so its cost is per call, not per sentence: many sentences
# decode far faster in one call than in many calls of a few. Bounding positions rather than sentences keeps a
# 100,000-character line from padding a thousand others to its length.
DECODE_POSITIONS = 1 << 17


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batch_starts(n: int, batch_size: int, progress: bool):
    """``range(0, n, batch_size)``, shown as a progress bar on stderr when `progress`. tqdm is imported only
    then, so that a prediction tool starts without it."""
    starts = range(0, n, batch_size)
    if not progress:
        return starts
    from tqdm import tqdm

    return tqdm(starts, desc="predict", unit="batch", leave=False)


def predict_tags(model: Tagger, id_seqs: Sequence[Sequence[int]], *, batch_size: int, overlap: int,
                 progress: bool = False, bias: Sequence[torch.Tensor | None] | None = None,
                 standard: str | None = None) -> list[list[int]]:
    """Tag indices of every sentence (lists of character ids, any length): `predict_tag_scores`, then each
    sentence decoded whole (`decode_tag_scores`, with `bias`). Call under no_grad, in eval mode."""
    scores = predict_tag_scores(model, id_seqs, batch_size=batch_size, overlap=overlap, progress=progress,
                                standard=standard)
    return decode_tag_scores(model.head, scores, bias)


def predict_tag_scores(model: Tagger, id_seqs: Sequence[Sequence[int]], *, batch_size: int, overlap: int,
                       progress: bool = False, standard: str | None = None) -> list[torch.Tensor]:
    """Tag scores ``(n_i, K)`` float32 on the CPU of every sentence: the windows of all sentences go through the
    model in batches of `batch_size` (longest first, so batches pad little) and their kept scores are stitched
    per sentence. A multi-criteria segmenter reads every window after the marker of `standard` (one of
    ``model.standards``, `charformer.tasks.criteria`); other models take None. Call under no_grad, in eval
    mode."""
    device, size, n_tags = _device(model), model.window, len(model.head.tags)
    marker = None if standard is None else model.markers.index(standard)
    scores = [torch.zeros(len(ids), n_tags) for ids in id_seqs]  # stitched (n_i, K) per sentence, on the CPU
    rows = [(i, w) for i, ids in enumerate(id_seqs) for w in plan_windows(len(ids), size, overlap)]
    rows.sort(key=lambda row: row[1].end - row[1].start, reverse=True)
    for b in _batch_starts(len(rows), batch_size, progress):
        batch = rows[b : b + batch_size]
        ids, lengths = pad_sequences([id_seqs[i][w.start : w.end] for i, w in batch])
        standards = None if marker is None else torch.full((len(batch),), marker, device=device)
        out = model(ids.to(device), lengths.to(device), standards=standards).cpu()  # (B, T, K)
        for (i, w), row in zip(batch, out):
            scores[i][w.keep_start : w.keep_end] = row[w.keep_start - w.start : w.keep_end - w.start]
    return scores


def decode_tag_scores(head, scores: Sequence[torch.Tensor],
                      bias: Sequence[torch.Tensor | None] | None = None) -> list[list[int]]:
    """The best valid tag path of each sentence's scores ``(n_i, K)`` under `head`'s decoder, sentences of
    similar length decoded together (`decode_groups`). `bias`, if given, holds per sentence None or an
    ``(n_i, K)`` score bias for the decoder (`TokenTaggingHead.decode`)."""
    device, n_tags = head.start_scores.device, len(head.tags)
    paths: list[list[int]] = [[] for _ in scores]
    order = sorted((i for i, s in enumerate(scores) if len(s)), key=lambda i: len(scores[i]))
    for group in decode_groups([len(scores[i]) for i in order], DECODE_POSITIONS):
        batch = [order[j] for j in group]
        lengths = torch.tensor([len(scores[i]) for i in batch])
        padded = torch.zeros(len(batch), int(lengths.max()), n_tags)
        padded_bias = None
        if bias is not None and any(bias[i] is not None for i in batch):
            padded_bias = torch.zeros_like(padded)
        for row, i in enumerate(batch):
            padded[row, : len(scores[i])] = scores[i]
            if padded_bias is not None and bias[i] is not None:
                padded_bias[row, : len(scores[i])] = bias[i]
        decoded = head.decode(padded.to(device), lengths.to(device),
                              None if padded_bias is None else padded_bias.to(device))
        for i, path in zip(batch, decoded):
            paths[i] = path
    return paths


def decode_groups(lengths: Sequence[int], budget: int) -> list[range]:
    """Split positions ``0..len(lengths)-1`` of ascending `lengths` into consecutive runs whose padded size
    (run length x its last, longest, length) is at most `budget`; a length over the budget is a run of its own."""
    groups, start = [], 0
    for end in range(1, len(lengths) + 1):
        if end == len(lengths) or (end - start + 1) * lengths[end] > budget:
            groups.append(range(start, end))
            start = end
    return groups


def chunk_batch(id_seqs: Sequence[Sequence[int]], block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts as ``[CLS] + chunk`` rows: ids ``(D, N, T)`` int64 and lengths ``(D, N)`` (0 for unused chunk
    slots), N the most chunks of any text, T <= block_size."""
    per_text = [[[CLS_ID, *ids[s:e]] for s, e in chunks(len(ids), block_size - 1)] for ids in id_seqs]
    n_chunks = max((len(c) for c in per_text), default=0)
    width = max((len(row) for c in per_text for row in c), default=1)
    ids = torch.zeros(len(id_seqs), n_chunks, width, dtype=torch.int64)
    lengths = torch.zeros(len(id_seqs), n_chunks, dtype=torch.int64)
    for d, text_chunks in enumerate(per_text):
        padded, n = pad_sequences(text_chunks, width=width)
        ids[d, : len(text_chunks)], lengths[d, : len(text_chunks)] = padded, n
    return ids, lengths


def predict_label_probs(model: Classifier, id_seqs: Sequence[Sequence[int]], *, batch_size: int,
                        progress: bool = False) -> torch.Tensor:
    """Label probabilities ``(len(id_seqs), L)`` of non-empty texts, predicted in batches of `batch_size` texts
    (shortest first). Call under no_grad, in eval mode."""
    device = _device(model)
    probs = torch.zeros(len(id_seqs), len(model.head.labels))
    order = sorted(range(len(id_seqs)), key=lambda i: len(id_seqs[i]))
    for b in _batch_starts(len(order), batch_size, progress):
        batch = order[b : b + batch_size]
        ids, lengths = chunk_batch([id_seqs[i] for i in batch], model.chunk_block)
        probs[batch] = model(ids.to(device), lengths.to(device)).softmax(-1).cpu()
    return probs


def tag_texts(model: Tagger, vocab: CharVocab, texts: Sequence[str], *, batch_size: int, overlap: int,
              progress: bool = False, bias: Sequence[torch.Tensor | None] | None = None,
              standard: str | None = None) -> list[list]:
    """Predicted spans (words or entities, see `schemes.tags_to_spans`) of each text; `bias` and `standard` as
    in `predict_tags`."""
    tags = model.head.tags
    paths = predict_tags(model, [vocab.encode_aligned(t) for t in texts], batch_size=batch_size, overlap=overlap,
                         progress=progress, bias=bias, standard=standard)
    return [tags_to_spans([tags[i] for i in path]) for path in paths]


def classify_texts(model: Classifier, vocab: CharVocab, texts: Sequence[str], *, batch_size: int,
                   progress: bool = False) -> torch.Tensor:
    """Label probabilities ``(len(texts), L)`` of non-empty texts."""
    return predict_label_probs(model, [vocab.encode_aligned(t) for t in texts], batch_size=batch_size, progress=progress)
