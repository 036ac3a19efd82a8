"""The fine-tuning objectives handed to `charformer.train.fit`.

Training draws random batches with the loop's generator alone (so a resumed run draws the same batches): for
tagging, pieces of sentences that fit a block (`windows.training_pieces`, cut at word or entity boundaries);
for classification, whole texts as chunks. One *epoch* is as many draws as there are training pieces or texts
(with replacement).

Tagging batches are *length-bucketed*, as machine translation batches sentences of similar length (Vaswani
et al. 2017, section 5.1): the pieces are sorted by length into buckets of `BUCKET_BATCHES` batches and a batch
is drawn from one bucket, so it pads little (a random batch pads every piece to the longest of a few dozen
drawn from the whole length distribution). Each piece stays equally likely: a bucket is chosen with probability
proportional to its size. The loss is the sum over the batch's real characters divided by a constant, rows x
mean piece length, rather than their mean: a batch of short pieces has few characters, and a mean would give
each of them more weight than a character of a long sentence.

Evaluation predicts every dev sentence whole, stitching windows where it is longer than a block
(`predict`), so each character gets exactly one tag, and scores it with the task metric: word F1
for segmentation, entity F1 for NER, accuracy for classification (`metrics`).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from ..data import IGNORE_INDEX, pad_sequences
from ..errors import CharformerError
from ..vocab import CharVocab
from .heads import Classifier, Tagger
from .metrics import classification_scores, cws_scores, entity_scores
from .predict import chunk_batch, classify_texts, tag_texts
from .readers import Document, Sentence
from .schemes import spans_to_tags, spans_to_words
from .windows import clip_spans, training_pieces

BUCKET_BATCHES = 16  # batches' worth of pieces per length bucket: enough variety within one, little padding


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
        return self._collate(bucket[torch.randint(len(bucket), (self.batch_size,), generator=generator)].tolist())

    def batches_in_order(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Every training piece once, in order, in batches of `batch_size` as `batch` makes them (for a
        measurement over a fixed set, such as head importance in `charformer.prune`)."""
        for start in range(0, len(self.pieces), self.batch_size):
            yield self._collate(range(start, min(start + self.batch_size, len(self.pieces))))

    def _collate(self, picks) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
