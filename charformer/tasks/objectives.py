"""The fine-tuning objectives handed to `charformer.train.fit`, and the batched prediction that evaluation and
the command-line tools share.

Training draws random batches with the loop's generator alone (so a resumed run draws the same batches): for
tagging, pieces of sentences that fit a block (`windows.training_pieces`, cut at word or entity boundaries);
for classification, whole texts as chunks. One *epoch* is as many draws as there are training pieces or texts
(with replacement).

Tagging batches are *length-bucketed*, as machine translation batches sentences of similar length (Vaswani
et al. 2017, section 5.1): the pieces are sorted by length into buckets of `BUCKET_BATCHES` batches and a batch
is drawn from one bucket, so it pads little (CTB6 training pieces: 45 characters on average; a random batch of
32 pads to ~116, a bucketed one to ~47). Each piece stays equally likely: a bucket is chosen with probability
proportional to its size. The loss is the sum over the batch's real characters divided by a constant, rows x
mean piece length, rather than their mean: a batch of short pieces has few characters, and a mean would give
each of them more weight than a character of a long sentence.

Evaluation predicts every dev sentence whole, stitching windows where it is longer than a block
(`windows.plan_windows`), so each character gets exactly one tag, and scores it with the task metric: word F1
for segmentation, entity F1 for NER, accuracy for classification (`metrics`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm import tqdm

from ..data import IGNORE_INDEX, pad_sequences
from ..errors import CharformerError
from ..vocab import CLS_ID, CharVocab
from .heads import Classifier, Tagger
from .metrics import classification_scores, cws_scores, entity_scores
from .readers import Document, Sentence
from .schemes import spans_to_tags, spans_to_words, tags_to_spans
from .windows import chunks, clip_spans, plan_windows, training_pieces

BUCKET_BATCHES = 16  # batches' worth of pieces per length bucket: enough variety within one, little padding
# Padded character positions per Viterbi call in `predict_tags`. Decoding steps through time in Python, a few
# small ops per position of the longest sentence, so its cost is per call, not per sentence: 500 CTB6 test
# sentences decode in 0.20 s in calls of 8 sentences, 0.05 s in one call (a fifth of the end-to-end time at
# model batches of 8). Bounding positions rather than sentences keeps a 100,000-character line from padding a
# thousand others to its length.
DECODE_POSITIONS = 1 << 17


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def predict_tags(model: Tagger, id_seqs: Sequence[Sequence[int]], *, batch_size: int, overlap: int,
                 progress: bool = False) -> list[list[int]]:
    """Tag indices of every sentence (lists of character ids, any length): `predict_tag_scores`, then each
    sentence decoded whole (`decode_tag_scores`). Call under no_grad, in eval mode."""
    scores = predict_tag_scores(model, id_seqs, batch_size=batch_size, overlap=overlap, progress=progress)
    return decode_tag_scores(model.head, scores)


def predict_tag_scores(model: Tagger, id_seqs: Sequence[Sequence[int]], *, batch_size: int, overlap: int,
                       progress: bool = False) -> list[torch.Tensor]:
    """Tag scores ``(n_i, K)`` float32 on the CPU of every sentence: the windows of all sentences go through the
    model in batches of `batch_size` (longest first, so batches pad little) and their kept scores are stitched
    per sentence. Call under no_grad, in eval mode."""
    device, size, n_tags = _device(model), model.body.cfg.block_size, len(model.head.tags)
    scores = [torch.zeros(len(ids), n_tags) for ids in id_seqs]  # stitched (n_i, K) per sentence, on the CPU
    rows = [(i, w) for i, ids in enumerate(id_seqs) for w in plan_windows(len(ids), size, overlap)]
    rows.sort(key=lambda row: row[1].end - row[1].start, reverse=True)
    for b in tqdm(range(0, len(rows), batch_size), desc="predict", unit="batch", disable=not progress, leave=False):
        batch = rows[b : b + batch_size]
        ids, lengths = pad_sequences([id_seqs[i][w.start : w.end] for i, w in batch])
        out = model(ids.to(device), lengths.to(device)).cpu()  # (B, T, K)
        for (i, w), row in zip(batch, out):
            scores[i][w.keep_start : w.keep_end] = row[w.keep_start - w.start : w.keep_end - w.start]
    return scores


def decode_tag_scores(head, scores: Sequence[torch.Tensor]) -> list[list[int]]:
    """The best valid tag path of each sentence's scores ``(n_i, K)`` under `head`'s decoder, sentences of similar
    length decoded together (`decode_groups`)."""
    device, n_tags = head.start_scores.device, len(head.tags)
    paths: list[list[int]] = [[] for _ in scores]
    order = sorted((i for i, s in enumerate(scores) if len(s)), key=lambda i: len(scores[i]))
    for group in decode_groups([len(scores[i]) for i in order], DECODE_POSITIONS):
        batch = [order[j] for j in group]
        lengths = torch.tensor([len(scores[i]) for i in batch])
        padded = torch.zeros(len(batch), int(lengths.max()), n_tags)
        for row, i in enumerate(batch):
            padded[row, : len(scores[i])] = scores[i]
        for i, path in zip(batch, head.decode(padded.to(device), lengths.to(device))):
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
    for b in tqdm(range(0, len(order), batch_size), desc="predict", unit="batch", disable=not progress, leave=False):
        batch = order[b : b + batch_size]
        ids, lengths = chunk_batch([id_seqs[i] for i in batch], model.chunk_block)
        probs[batch] = model(ids.to(device), lengths.to(device)).softmax(-1).cpu()
    return probs


def tag_texts(model: Tagger, vocab: CharVocab, texts: Sequence[str], *, batch_size: int, overlap: int,
              progress: bool = False) -> list[list]:
    """Predicted spans (words or entities, see `schemes.tags_to_spans`) of each text."""
    tags = model.head.tags
    paths = predict_tags(model, [vocab.encode_aligned(t) for t in texts], batch_size=batch_size, overlap=overlap,
                         progress=progress)
    return [tags_to_spans([tags[i] for i in path]) for path in paths]


def classify_texts(model: Classifier, vocab: CharVocab, texts: Sequence[str], *, batch_size: int,
                   progress: bool = False) -> torch.Tensor:
    """Label probabilities ``(len(texts), L)`` of non-empty texts."""
    return predict_label_probs(model, [vocab.encode_aligned(t) for t in texts], batch_size=batch_size, progress=progress)


class TaggingObjective:
    """Segmentation or NER as character tagging. `task` is the task description (``task``, ``tags``,
    ``scheme``, ``overlap``); `train_words` (segmentation) is the training word list for OOV recall."""

    metric = "f1"
    higher_is_better = True

    def __init__(self, task: dict, train: Sequence[Sentence], dev: Sequence[Sentence], vocab: CharVocab, *,
                 block_size: int, batch_size: int, eval_batch_size: int, train_words: set[str] | None = None):
        self.task, self.dev, self.vocab = task, list(dev), vocab
        self.batch_size, self.eval_batch_size, self.train_words = batch_size, eval_batch_size, train_words or set()
        index = {tag: i for i, tag in enumerate(task["tags"])}
        self.pieces: list[tuple[list[int], list[int]]] = []
        for sentence in train:
            ids = vocab.encode_aligned(sentence.text)
            for a, b in training_pieces(sentence.spans, len(ids), block_size):
                tags = spans_to_tags(clip_spans(sentence.spans, a, b), b - a, task["scheme"])
                self.pieces.append((ids[a:b], [index[t] for t in tags]))
        by_length = sorted(range(len(self.pieces)), key=lambda i: len(self.pieces[i][0]))
        size = BUCKET_BATCHES * batch_size
        self.buckets = [torch.tensor(by_length[i : i + size]) for i in range(0, len(by_length), size)]
        self.bucket_sizes = torch.tensor([len(b) for b in self.buckets], dtype=torch.float64)
        self.mean_length = sum(len(ids) for ids, _ in self.pieces) / max(1, len(self.pieces))

    @property
    def n_train(self) -> int:
        return len(self.pieces)

    def batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids ``(B, T)``, lengths ``(B,)``, tags ``(B, T)`` (`IGNORE_INDEX` on padding): `batch_size` pieces
        drawn uniformly from one length bucket, itself drawn in proportion to its size. Raises CharformerError
        when no training sentence has a character."""
        if not self.buckets:
            raise CharformerError("no training sentence has a character to tag")
        bucket = self.buckets[int(torch.multinomial(self.bucket_sizes, 1, generator=generator))]
        picks = bucket[torch.randint(len(bucket), (self.batch_size,), generator=generator)].tolist()
        ids, lengths = pad_sequences([self.pieces[i][0] for i in picks])
        tags, _ = pad_sequences([self.pieces[i][1] for i in picks], pad=IGNORE_INDEX)
        return ids, lengths, tags

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        """Summed loss over the real characters / (rows x mean piece length); see the module docstring."""
        ids, lengths, tags = batch
        n_chars = int(lengths.sum())
        return model(ids, lengths, tags) * (n_chars / (len(ids) * self.mean_length)), n_chars

    def score(self, model: Tagger, sentences: Sequence[Sentence], progress: bool = False) -> dict:
        """All metrics of the task on `sentences` (segmentation: `cws_scores`; NER: `entity_scores`)."""
        predicted = tag_texts(model, self.vocab, [s.text for s in sentences], batch_size=self.eval_batch_size,
                              overlap=self.task["overlap"], progress=progress)
        if self.task["task"] == "cws":
            return cws_scores([spans_to_words(s.text, s.spans) for s in sentences],
                              [spans_to_words(s.text, p) for s, p in zip(sentences, predicted)], self.train_words)
        return entity_scores([s.spans for s in sentences], predicted)

    def evaluate(self, model) -> dict[str, float]:
        return {k: v for k, v in self.score(model, self.dev).items() if isinstance(v, float)}

    def report(self, model) -> None:
        return None


class ClassificationObjective:
    """Text classification over the label list ``task["labels"]``."""

    metric = "accuracy"
    higher_is_better = True

    def __init__(self, task: dict, train: Sequence[Document], dev: Sequence[Document], vocab: CharVocab, *,
                 block_size: int, batch_size: int, eval_batch_size: int):
        self.task, self.dev, self.vocab, self.block_size = task, list(dev), vocab, block_size
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        index = {label: i for i, label in enumerate(task["labels"])}
        self.train_ids = [vocab.encode_aligned(d.text) for d in train]
        self.train_labels = [index[d.label] for d in train]

    @property
    def n_train(self) -> int:
        return len(self.train_ids)

    def batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids ``(D, N, T)``, lengths ``(D, N)``, labels ``(D,)``: see `chunk_batch`."""
        picks = torch.randint(len(self.train_ids), (self.batch_size,), generator=generator).tolist()
        ids, lengths = chunk_batch([self.train_ids[i] for i in picks], self.block_size)
        return ids, lengths, torch.tensor([self.train_labels[i] for i in picks])

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        ids, lengths, labels = batch
        return model(ids, lengths, labels), int((lengths - (lengths > 0).long()).sum())  # [CLS] not counted

    def score(self, model: Classifier, documents: Sequence[Document], progress: bool = False) -> dict:
        """Accuracy, macro-F1 and the confusion matrix on `documents`."""
        labels = model.head.labels
        probs = classify_texts(model, self.vocab, [d.text for d in documents], batch_size=self.eval_batch_size,
                               progress=progress)
        predicted = probs.argmax(-1).tolist()
        return classification_scores([d.label for d in documents], [labels[i] for i in predicted], labels)

    def evaluate(self, model) -> dict[str, float]:
        return {k: v for k, v in self.score(model, self.dev).items() if isinstance(v, float)}

    def report(self, model) -> None:
        return None
