"""Knowledge distillation for tagging: a student learns the teacher's tag distribution at every character.

Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network": a trained model's output
distribution says more than its argmax (which wrong answers it finds plausible, and how sure it is), so a
smaller or faster student trained to reproduce it learns more per example than from the gold labels alone.
Both distributions are softened by a temperature T (scores divided by T), and the soft term is multiplied by
T², because its gradients scale as 1 / T² (section 2 of the paper):

    loss = alpha * T² * KL(P_teacher || P_student) + (1 - alpha) * gold loss

For a tagger P is per character, and the KL (nats) is averaged over the batch's real characters (padding
excluded):

* a softmax tagger: P = softmax(scores / T) over the K tags;
* a CRF tagger: P = its forward-backward marginals, the probability of each tag at each position summed over
  all tag paths, with every score (emissions, transitions, start and end) divided by T
  (`charformer.tasks.crf.CRF.marginals`). A CRF student's marginals keep their graph, so the KL trains its
  transitions too.

The student is any tagger of the same task and tags: from scratch or from a pretrained body, smaller, or an
hourglass (``--shorten 2``). It may have another vocabulary than the teacher's: each batch's character ids are
mapped to the teacher's (`vocab_map`), a character the teacher never saw reading as its [UNK]. The teacher runs
in eval mode without gradients, on the same batch: one extra forward pass per loss computation.

The student's scores are read by a forward hook on its head, so the wrapped objective is unchanged
(`charformer.finetuning.toolbox`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import CharformerError
from ..tasks.heads import Tagger, TokenTaggingHead, real_positions
from ..vocab import SPECIAL_TOKENS, CharVocab


def tag_distribution(head: TokenTaggingHead, scores: torch.Tensor, lengths: torch.Tensor, temperature: float, *,
                     differentiable: bool = False) -> torch.Tensor:
    """Log-probabilities ``(B, T, K)`` float32 of each tag at each character at `temperature`: log-softmax of
    ``scores / temperature`` for a softmax head, the log of the CRF's marginals for a CRF head (floored at the
    smallest float, so a tag the scheme forbids is finite and large negative). `scores` ``(B, T, K)`` are the
    head's output, `lengths` ``(B,)`` >= 1. `differentiable`: keep the CRF marginals' graph."""
    if head.crf is None:
        return (scores.float() / temperature).log_softmax(-1)
    marginals = head.crf.marginals(scores, lengths, temperature=temperature, differentiable=differentiable)
    return marginals.clamp(min=torch.finfo(marginals.dtype).tiny).log()


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``KL(P || Q) = sum_k P_k (log P_k - log Q_k)`` in nats, averaged over the rows of finite log-probabilities
    ``(..., K)`` (as `tag_distribution` gives them) where `keep` ``(...)`` bool is True."""
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return kl[keep].sum() / keep.sum().clamp(min=1)


def vocab_map(student: CharVocab, teacher: CharVocab) -> torch.Tensor:
    """``(len(student),)`` int64: the teacher's id of each student id (its special tokens to the same ones,
    a character the teacher lacks to its [UNK])."""
    ids = list(range(len(SPECIAL_TOKENS)))
    ids += [teacher.encode_aligned(ch)[0] for ch in student.itos[len(SPECIAL_TOKENS):]]
    return torch.tensor(ids, dtype=torch.long)


def check_teacher(teacher: Tagger, teacher_task: dict, student_task: dict, block_size: int, where: str) -> None:
    """Raise CharformerError unless `teacher` tags the student's task (`student_task`, a task description of
    `charformer.tasks.jobs`) with the same tags, and reads pieces of `block_size` characters, and neither is a
    multi-criteria segmenter."""
    if not isinstance(teacher, Tagger) or teacher_task["task"] != student_task["task"]:
        raise CharformerError(f"--distill-from {where}: a {teacher_task['task']} model; the student is "
                              f"{student_task['task']}")
    if teacher.standards or student_task.get("standards"):
        raise CharformerError(f"--distill-from {where}: distillation is between single-standard models; a "
                              "multi-criteria teacher or student (charformer.tasks.criteria) is not supported")
    if list(teacher.head.tags) != list(student_task["tags"]):
        raise CharformerError(f"--distill-from {where}: its tags {teacher.head.tags} differ from the student's "
                              f"{student_task['tags']}")
    if teacher.body.cfg.block_size < block_size:
        raise CharformerError(f"--distill-from {where}: block_size {teacher.body.cfg.block_size} is shorter than "
                              f"the student's {block_size}, whose training pieces it must read")


class Distill:
    """`objective` (a tagging objective of `charformer.tasks.objectives`) with the distillation loss of the
    module docstring; `model` is the unwrapped student that fit trains (its head is hooked), `teacher` a
    tagger of the same tags on the student's device, `to_teacher` the `vocab_map` from the student's ids to the
    teacher's. `last_kl`
    is the KL of the latest batch, in nats per character (before the T² factor). Raises ValueError for an
    `alpha` outside [0, 1] or a `temperature` <= 0."""

    def __init__(self, objective, model: Tagger, teacher: Tagger, to_teacher: torch.Tensor, *, alpha: float,
                 temperature: float):
        if not 0 <= alpha <= 1 or not temperature > 0:
            raise ValueError(f"need 0 <= distill alpha <= 1 and temperature > 0, got {alpha} and {temperature}")
        self.objective, self.student_head = objective, model.head
        self.teacher = teacher.eval().requires_grad_(False)
        self.to_teacher = to_teacher.to(next(teacher.parameters()).device)
        self.alpha, self.temperature = alpha, temperature
        self.scores: list[torch.Tensor] | None = None
        self.last_kl = float("nan")
        model.head.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs, out: torch.Tensor) -> None:
        if self.scores is not None:
            self.scores.append(out)

    def __getattr__(self, name):  # metric, higher_is_better, batch, evaluate, report, ...
        return getattr(self.objective, name)

    def loss(self, model, batch) -> tuple[torch.Tensor, int]:
        ids, lengths = batch[0], batch[1]
        self.scores = []
        try:
            gold, n_chars = self.objective.loss(model, batch)
            student = self.scores[0]  # the head's output in the objective's forward pass
        finally:
            self.scores = None
        with torch.no_grad():
            log_p = tag_distribution(self.teacher.head, self.teacher(self.to_teacher[ids], lengths), lengths,
                                     self.temperature)
        log_q = tag_distribution(self.student_head, student, lengths, self.temperature, differentiable=True)
        kl = kl_divergence(log_p, log_q, real_positions(lengths, student.shape[1]))
        self.last_kl = kl.item()
        return self.alpha * self.temperature ** 2 * kl + (1 - self.alpha) * gold, n_chars
