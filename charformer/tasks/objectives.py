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
from .criteria import MIX_TEMPERATURE, marker_width, mean_scores, mix_shares
from .heads import Classifier, Tagger
from .metrics import classification_scores, cws_scores, entity_scores
from .predict import chunk_batch, classify_texts, tag_texts
from .readers import Document, Sentence
from .schemes import spans_to_tags, spans_to_words
from .windows import clip_spans, training_pieces

BUCKET_BATCHES = 16  # batches' worth of pieces per length bucket: enough variety within one, little padding


class TaggingObjective:
    """Segmentation or NER as character tagging. `task` is the task description (``task``, ``tags``,
    ``scheme``, ``overlap``); `train_words` (segmentation) is the training word list for OOV recall.

    A multi-criteria segmenter (``task["standards"]``, `charformer.tasks.criteria`) takes `train`, `dev` and
    `train_words` as dicts by standard; its rows are drawn from the corpora in the shares of
    `criteria.mix_shares` at `mix_temperature`, each row after its standard's marker, and its metric is the
    mean F1 over the standards."""

    metric = "f1"
    higher_is_better = True

    def __init__(self, task: dict, train: Sequence[Sentence] | dict[str, Sequence[Sentence]],
                 dev: Sequence[Sentence] | dict[str, Sequence[Sentence]], vocab: CharVocab, *,
                 block_size: int, batch_size: int, eval_batch_size: int,
                 train_words: set[str] | dict[str, set[str]] | None = None, mix_temperature: float = MIX_TEMPERATURE):
        self.task, self.vocab, self.standards = task, vocab, list(task.get("standards", ()))
        self.dev = dev if self.standards else list(dev)
        self.batch_size, self.eval_batch_size, self.train_words = batch_size, eval_batch_size, train_words or set()
        corpora = [train[name] for name in self.standards] if self.standards else [train]
        self.pieces: list[tuple[list[int], list[int]]] = []
        self.piece_standard: list[int] = []  # the standard (index into self.standards) of each piece
        for k, sentences in enumerate(corpora):
            new = self._pieces(sentences, marker_width(block_size, self.standards))
            self.pieces += new
            self.piece_standard += [k] * len(new)
        # Each piece's chance of being drawn (relative): 1 for one corpus, its corpus's share / its size for several.
        self.piece_weights = torch.ones(len(self.pieces), dtype=torch.float64)
        self.shares = [1.0]  # each corpus's share of the rows drawn
        if self.standards:
            sizes = [self.piece_standard.count(k) for k in range(len(corpora))]
            shares = self.shares = mix_shares(sizes, mix_temperature)
            self.piece_weights = torch.tensor([shares[k] / sizes[k] for k in self.piece_standard], dtype=torch.float64)
        by_length = sorted(range(len(self.pieces)), key=lambda i: len(self.pieces[i][0]))
        size = BUCKET_BATCHES * batch_size
        self.buckets = [torch.tensor(by_length[i : i + size]) for i in range(0, len(by_length), size)]
        self.bucket_sizes = torch.stack([self.piece_weights[b].sum() for b in self.buckets]) if self.buckets else None
        lengths = torch.tensor([len(ids) for ids, _ in self.pieces], dtype=torch.float64)
        self.mean_length = float((lengths * self.piece_weights).sum() / self.piece_weights.sum()) if self.pieces else 0.0

    def _pieces(self, sentences: Sequence[Sentence], width: int) -> list[tuple[list[int], list[int]]]:
        """(ids, tag indices) of the training pieces of `sentences`, each at most `width` characters."""
        index, pieces = {tag: i for i, tag in enumerate(self.task["tags"])}, []
        for sentence in sentences:
            ids = self.vocab.encode_aligned(sentence.text)
            for a, b in training_pieces(sentence.spans, len(ids), width):
                tags = spans_to_tags(clip_spans(sentence.spans, a, b), b - a, self.task["scheme"])
                pieces.append((ids[a:b], [index[t] for t in tags]))
        return pieces

    @property
    def n_train(self) -> int:
        return len(self.pieces)

    def batch(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """ids ``(B, T)``, lengths ``(B,)``, tags ``(B, T)`` (`IGNORE_INDEX` on padding), and for a
        multi-criteria segmenter standards ``(B,)``: `batch_size` pieces drawn from one length bucket (itself
        drawn in proportion to its pieces' weight), uniformly or, for several corpora, by their weights. Raises
        CharformerError when no training sentence has a character."""
        if not self.buckets:
            raise CharformerError("no training sentence has a character to tag")
        bucket = self.buckets[int(torch.multinomial(self.bucket_sizes, 1, generator=generator))]
        if self.standards:
            draws = torch.multinomial(self.piece_weights[bucket], self.batch_size, replacement=True, generator=generator)
        else:
            draws = torch.randint(len(bucket), (self.batch_size,), generator=generator)
        return self._collate(bucket[draws].tolist())

    def batches_in_order(self) -> Iterator[tuple[torch.Tensor, ...]]:
        """Every training piece once, in order, in batches of `batch_size` as `batch` makes them (for a
        measurement over a fixed set, such as head importance in `charformer.prune`)."""
        for start in range(0, len(self.pieces), self.batch_size):
            yield self._collate(range(start, min(start + self.batch_size, len(self.pieces))))

    def _collate(self, picks) -> tuple[torch.Tensor, ...]:
        ids, lengths = pad_sequences([self.pieces[i][0] for i in picks])
        tags, _ = pad_sequences([self.pieces[i][1] for i in picks], pad=IGNORE_INDEX)
        if not self.standards:
            return ids, lengths, tags
        return ids, lengths, tags, torch.tensor([self.piece_standard[i] for i in picks])

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        """Summed loss over the real characters / (rows x mean piece length); see the module docstring."""
        ids, lengths = batch[0], batch[1]
        n_chars = int(lengths.sum())
        return model(*batch) * (n_chars / (len(ids) * self.mean_length)), n_chars

    def score(self, model: Tagger, sentences: Sequence[Sentence] | dict[str, Sequence[Sentence]],
              progress: bool = False) -> dict:
        """All metrics of the task on `sentences` (segmentation: `cws_scores`; NER: `entity_scores`); for a
        multi-criteria segmenter, `sentences` by standard and the scores of each under ``"standards"``, with
        their mean (`criteria.mean_scores`)."""
        if self.standards:
            return mean_scores({name: self._score(model, sentences[name], self.train_words[name], name, progress)
                                for name in self.standards})
        return self._score(model, sentences, self.train_words, None, progress)

    def _score(self, model: Tagger, sentences: Sequence[Sentence], train_words: set[str], standard: str | None,
               progress: bool) -> dict:
        predicted = tag_texts(model, self.vocab, [s.text for s in sentences], batch_size=self.eval_batch_size,
                              overlap=self.task["overlap"], progress=progress, standard=standard)
        if self.task["task"] == "cws":
            return cws_scores([spans_to_words(s.text, s.spans) for s in sentences],
                              [spans_to_words(s.text, p) for s, p in zip(sentences, predicted)], train_words)
        return entity_scores([s.spans for s in sentences], predicted)

    def evaluate(self, model) -> dict[str, float]:
        scores = self.score(model, self.dev)
        per_standard = {f"f1_{name}": s["f1"] for name, s in scores.get("standards", {}).items()}
        return {**{k: v for k, v in scores.items() if isinstance(v, float)}, **per_standard}

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

    def draw(self, generator: torch.Generator, n: int) -> tuple[list[list[int]], list[int]]:
        """`n` training texts drawn uniformly with replacement: their character ids and label indices."""
        if not self.train_ids:
            raise CharformerError("no training text to draw from")
        picks = torch.randint(len(self.train_ids), (n,), generator=generator).tolist()
        return [self.train_ids[i] for i in picks], [self.train_labels[i] for i in picks]

    def batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids ``(D, N, T)``, lengths ``(D, N)``, labels ``(D,)``: see `chunk_batch`."""
        texts, labels = self.draw(generator, self.batch_size)
        ids, lengths = chunk_batch(texts, self.block_size)
        return ids, lengths, torch.tensor(labels)

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
