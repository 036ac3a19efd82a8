"""Classification tasks learned one after another: the earlier task's head kept, its forgetting measured, and
two remedies against it.

Fine-tuning a classifier on task A and then its body on a new task B (``finetune.py --task classify --init
A_CHECKPOINT``) moves the weights that A relied on: catastrophic forgetting (McCloskey & Cohen 1989). The
setting is the *task-incremental* one of van de Ven & Tolias 2019 ("Three scenarios for continual learning"):
each task has its own head on a shared body, so A's accuracy after B is A's head read on B's body. A's head
is carried along frozen (`PreviousTask`), and A's held-out file (``--original-val``) is scored with it before
and after, as ``--task lm`` scores its original text.

The remedies, each optional:

- rehearsal (Robins 1995): ``--rehearsal-share`` of every batch's texts come from A's labelled training file
  (``--rehearsal-data``) and are scored through A's frozen head (`Rehearsal`), the rest are B's;
- EWC (Kirkpatrick et al. 2017, `charformer.finetuning.ewc`): the Fisher information is that of A's
  classification loss, on batches of A's training file (``--ewc-data``) read through A's head
  (`previous_task_losses`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from ..checkpoint import read_meta
from ..errors import CharformerError
from ..peft import find_adapter
from ..tasks.checkpoint import load_task_checkpoint
from ..tasks.heads import Classifier, SequenceClassificationHead
from ..tasks.objectives import ClassificationObjective
from ..tasks.predict import chunk_batch
from ..tasks.readers import Document, read_labeled
from ..vocab import CharVocab


def is_task_checkpoint(path: str) -> bool:
    """Whether `path` is a fine-tuned task checkpoint or adapter (not a pretrained checkpoint, not "scratch").
    Raises CharformerError for a directory that holds neither."""
    return path != "scratch" and (find_adapter(path) is not None or "task" in read_meta(path)[0])


@dataclass
class PreviousTask:
    """The classifier a run starts from: its frozen head and label list, and how its files are read."""

    path: str
    head: SequenceClassificationHead  # requires_grad off, eval mode (no head dropout)
    task: dict  # its task description (labels, pooling, head_dropout)
    reading: dict = field(default_factory=dict)  # label_column, text_column, delimiter for read_labeled

    def model(self, body) -> Classifier:
        """The earlier task's classifier on `body` (the body being trained: its weights, not a copy)."""
        self.head.to(next(body.parameters()).device)
        return Classifier(body, self.head)

    def documents(self, path: str) -> list[Document]:
        """The labelled texts of `path`, read like --train. Raises CharformerError naming FILE:LINE for a label
        the earlier head does not have."""
        docs = read_labeled(path, **self.reading)
        unknown = [d for d in docs if d.label not in self.task["labels"]]
        if unknown:
            raise CharformerError(f"{unknown[0].where}: label {unknown[0].label!r} is not one of the earlier "
                                  f"classifier's ({self.path}: {self.task['labels']})")
        return docs

    def objective(self, path: str, vocab: CharVocab, *, block_size: int, batch_size: int,
                  eval_batch_size: int) -> ClassificationObjective:
        """Batches of the earlier task's labelled file `path`, and its scoring."""
        return ClassificationObjective(self.task, self.documents(path), [], vocab, block_size=block_size,
                                       batch_size=batch_size, eval_batch_size=eval_batch_size)


def load_previous_task(path: str, reading: dict) -> tuple[PreviousTask, Classifier]:
    """The fine-tuned classifier at `path`: the `PreviousTask` (its head, frozen) and the whole model (whose body
    the new run starts from). Raises CharformerError for a tagger, a cloze classifier or an adapter."""
    if find_adapter(path) is not None:
        raise CharformerError(f"--init {path}: an adapter; learning a task after another starts from a complete "
                              "classifier checkpoint (finetune.py --method full)")
    model, _, task = load_task_checkpoint(path)
    if task["task"] != "classify" or "cloze" in task:
        kind = "cloze classifier" if "cloze" in task else f"{task['task']} checkpoint"
        raise CharformerError(f"--init {path}: a fine-tuned {kind}; --task classify continues a classifier with a "
                              "label head (or starts from a pretrained checkpoint)")
    head = model.head.requires_grad_(False).eval()
    return PreviousTask(str(path), head, task, reading), model


class Rehearsal:
    """A classification objective whose batches also hold texts of the earlier task (see the module docstring).

    `objective` draws the new task's rows (its batch_size: the batch less the rehearsed rows), `old` the earlier
    task's (its batch_size: the rehearsed rows). A batch is ids ``(D, N, T)``, lengths ``(D, N)``, labels
    ``(D,)`` and is_old ``(D,)`` bool (old rows last); its loss is the mean cross-entropy per text over all D,
    each text scored by its own task's head. Everything else (metric, evaluate, n_train) is the new task's."""

    def __init__(self, objective: ClassificationObjective, old: ClassificationObjective, previous: PreviousTask):
        self.objective, self.old, self.previous = objective, old, previous

    def __getattr__(self, name):
        return getattr(self.objective, name)

    def batch(self, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        new_ids, new_labels = self.objective.draw(generator, self.objective.batch_size)
        old_ids, old_labels = self.old.draw(generator, self.old.batch_size)
        ids, lengths = chunk_batch(new_ids + old_ids, self.objective.block_size)
        is_old = torch.tensor([False] * len(new_ids) + [True] * len(old_ids))
        return ids, lengths, torch.tensor(new_labels + old_labels), is_old

    def loss(self, model: Classifier, batch) -> tuple[torch.Tensor, int]:
        ids, lengths, labels, is_old = batch
        total = ids.new_zeros((), dtype=torch.float32)
        for rows, classifier in ((~is_old, model), (is_old, self.previous.model(model.body))):
            if rows.any():  # each head's mean cross-entropy, weighted by its share of the texts
                total = total + classifier(ids[rows], lengths[rows], labels[rows]) * rows.sum()
        return total / len(ids), int((lengths - (lengths > 0).long()).sum())


def previous_task_losses(previous: PreviousTask, body, objective: ClassificationObjective, *,
                         n_batches: int, seed: int) -> Iterator[Callable[[], torch.Tensor]]:
    """`n_batches` callables, each the earlier task's mean cross-entropy per text (nats) on a batch of
    `objective` (the earlier task's file), read through its head on `body`: what EWC's Fisher information is
    estimated from (`charformer.finetuning.ewc.fisher_diagonal`)."""
    gen = torch.Generator().manual_seed(seed)
    device = next(body.parameters()).device
    classifier = previous.model(body)

    def one() -> torch.Tensor:
        return classifier(*(t.to(device) for t in objective.batch(gen)))

    return (one for _ in range(n_batches))

