"""The fine-tuning toolbox in finetune.py: its options, and the wrappers it puts around the job.

    objective ─> Distill ─> RDrop ─> Adversarial ─> + EWC penalty ─> Averaged ─> charformer.train.fit
                 (+ the      (two     (K+1 passes)                      (evaluates, and OUT/best saves,
                 teacher)    passes)                                     the averaged weights)

Every method is a wrapper around the objective that `fit` trains (its ``loss``, or its ``evaluate``), a call
after each optimizer step (the EMA), a wrapper around the run's `Checkpointer` (the averaged weights saved as
best), or a change of the data or the head made before training (augmentation in
`charformer.tasks.jobs`, the cloze head here), so the training loop itself knows none of them. Each option
left at its default (0, empty, "none") leaves the run exactly as without the toolbox.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace

from ..cli import option
from ..data import encode_array, read_corpus
from ..errors import CharformerError
from ..peft.training import _Penalised
from ..tasks.checkpoint import load_task_checkpoint, save_task_checkpoint
from .adversarial import Adversarial
from .averaging import EMA, Averaged, LastCheckpoints, swapped, trainable
from .cloze import ClozeClassifier, ClozeHead, encode_pattern, read_verbalizers
from .continual import previous_task_losses
from .distill import Distill, check_teacher, vocab_map
from .ewc import EWCPenalty, fisher_diagonal, lm_batch_losses
from .rdrop import RDrop


@dataclass
class ToolboxConfig:
    """Options of charformer/finetuning (0, empty or none: off)."""

    adversarial: str = option("none", "adversarial training on the character embeddings: none, fgm or pgd")
    adv_eps: float = option(1.0, "fgm, pgd: radius of the perturbation of a sequence's embeddings (L2 norm)")
    adv_steps: int = option(3, "pgd: ascent steps")
    adv_alpha: float = option(0.0, "pgd: step size (0: 2.5 x eps / steps, as Madry et al.)")
    rdrop: float = option(0.0, "R-Drop: weight of the symmetric KL between two dropout passes (needs dropout)")
    ema: float = option(0.0, "evaluate and save an exponential moving average of the weights with this decay")
    average_last: int = option(0, "evaluate and save the mean of the weights at the last N evaluations")
    augment: str = option("", "augmentations added to the training set, comma-separated: classify delete, swap, "
                           "insert, mix; ner entity; cws concat, split")
    ewc: float = option(0.0, "EWC: lambda of the penalty lambda/2 x sum F (theta - theta*)^2 (needs --ewc-data)")
    ewc_data: str = option("", "EWC: data of the earlier task, for its Fisher information (lm: the original "
                            "corpus; cws, ner, classify: pretraining text of the body; classify from a fine-tuned "
                            "classifier: that classifier's labelled training file)")
    ewc_batches: int = option(20, "EWC: batches of --ewc-data that estimate the Fisher information")
    pattern: str = option("", "--method cloze: the text's frame, one {text} and one [MASK], e.g. {text}总之很[MASK]。")
    verbalizers: str = option("", "--method cloze: file of LABEL<TAB>VERBALISER lines, one per label")
    distill_from: str = option("", "knowledge distillation (cws, ner): a tagging checkpoint of the same tags whose "
                               "per-character tag distributions the student learns (Hinton et al. 2015)")
    distill_alpha: float = option(0.5, "distillation: weight of T^2 x KL(teacher || student); 1 - it weighs the "
                                  "gold loss")
    distill_temperature: float = option(1.0, "distillation: temperature T dividing both models' scores")

    def __post_init__(self):
        if self.adversarial not in ("none", "fgm", "pgd"):
            raise ValueError(f"adversarial must be none, fgm or pgd, got {self.adversarial!r}")
        if self.adv_eps <= 0 or self.adv_steps < 1 or self.adv_alpha < 0:
            raise ValueError("need adv_eps > 0, adv_steps >= 1 and adv_alpha >= 0")
        if self.rdrop < 0 or self.ewc < 0 or self.average_last < 0 or self.ewc_batches < 1:
            raise ValueError("need rdrop, ewc, average_last >= 0 and ewc_batches >= 1")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema decay must be in [0, 1), got {self.ema}")
        if self.ema and self.average_last:
            raise ValueError("give --ema or --average-last, not both: each decides which weights are evaluated")
        if bool(self.ewc) != bool(self.ewc_data):
            raise ValueError("--ewc LAMBDA and --ewc-data FILE go together")
        if not 0 <= self.distill_alpha <= 1 or not self.distill_temperature > 0:
            raise ValueError("need 0 <= distill_alpha <= 1 and distill_temperature > 0")


def take_cloze(given: dict) -> bool:
    """Whether ``--method cloze`` was asked (`given`: the options given, `charformer.cli.parse_with_config`).
    It trains every weight, so for the method machinery (`charformer.peft.training`) it is ``full``, which this
    puts in its place in `given`. Raises CharformerError when --pattern or --verbalizers come without it, or it
    without them."""
    cloze = given.get("method") == "cloze"
    n_given = bool(given.get("pattern")) + bool(given.get("verbalizers"))
    if cloze and n_given < 2:
        raise CharformerError("--method cloze needs --pattern TEXT and --verbalizers FILE")
    if n_given and not cloze:
        raise CharformerError("--pattern and --verbalizers are for --method cloze")
    if cloze:
        given["method"] = "full"
    return cloze


def cloze_job(job, cfg: ToolboxConfig, task: str):
    """`job` (a classification job of `charformer.tasks.jobs`) with its classification head replaced by the
    cloze head of `charformer.finetuning.cloze`, saved and reloaded as such."""
    if task != "classify" or job.base_dir is None:
        raise CharformerError("--method cloze is for --task classify from a pretrained language model (--init DIR)")
    labels = job.description["task"]["labels"]
    verbalizers = read_verbalizers(cfg.verbalizers)
    if set(verbalizers) != set(labels):
        raise CharformerError(f"{cfg.verbalizers}: labels {sorted(verbalizers)} differ from the training file's "
                              f"{labels}")
    cloze = encode_pattern(cfg.pattern, {label: verbalizers[label] for label in labels}, job.vocab)
    description = {**job.description["task"], "cloze": cloze}
    model = ClozeClassifier(job.body, ClozeHead(labels, cloze))
    objective = copy.copy(job.objective)
    objective.block_size = model.chunk_block  # its training batches are [CLS] + chunk rows the pattern fits around

    def save_full(path, extra, trainer_state, trainer_tensors, weights):
        save_task_checkpoint(path, model, job.vocab, description, extra=extra, trainer_state=trainer_state,
                             trainer_tensors=trainer_tensors, weights=weights)

    return replace(job, model=model, objective=objective, description={"task": description}, heads={},
                   lr_scale=None, save_full=save_full, results={**job.results, "head": description})


class Toolbox:
    """The methods of `cfg` set up on `job` (after the fine-tuning method has been applied, so that they see
    which parameters train): wrap the objective with `objective`, chain `after_step` after the method's own,
    wrap the run's Checkpointer with `checkpoints` (which keeps the averager's state in OUT/last) and `restore`
    that state."""

    def __init__(self, job, cfg: ToolboxConfig, *, batch_size: int, seed: int, fsdp: bool):
        self.cfg, self.model, self.body = cfg, job.model, job.body
        params = trainable(job.model)
        if (cfg.ema or cfg.average_last) and fsdp:
            raise CharformerError("--ema and --average-last keep whole copies of the weights: not with --fsdp")
        self.averager: EMA | LastCheckpoints | None = None
        if cfg.ema:
            self.averager = EMA(params, cfg.ema)
        elif cfg.average_last:
            self.averager = LastCheckpoints(params, cfg.average_last)
        self.ewc = None
        if cfg.ewc:
            was_training = job.model.training
            job.model.eval()  # the Fisher information of the model as it is, without dropout
            fisher = fisher_diagonal(params, ewc_losses(job, cfg, batch_size=batch_size, seed=seed))
            job.model.train(was_training)
            self.ewc = EWCPenalty(params, fisher, cfg.ewc)
        self.teacher = load_teacher(job, cfg.distill_from) if cfg.distill_from else None

    def objective(self, objective):
        """`objective` with the methods of the config around it, in the order of the module docstring."""
        cfg = self.cfg
        if self.teacher is not None:
            objective = Distill(objective, self.model, *self.teacher, alpha=cfg.distill_alpha,
                                temperature=cfg.distill_temperature)
        if cfg.rdrop:
            objective = RDrop(objective, self.model, cfg.rdrop)
        if cfg.adversarial != "none":
            steps = 1 if cfg.adversarial == "fgm" else cfg.adv_steps
            objective = Adversarial(objective, self.body.tok_emb, eps=cfg.adv_eps, steps=steps,
                                    alpha=(cfg.adv_alpha or None) if steps > 1 else None)
        if self.ewc is not None:
            objective = _Penalised(objective, self.ewc)
        if self.averager is not None:
            objective = Averaged(objective, self.averager)
        return objective

    def after_step(self, method_after_step):
        """`fit`'s after_step: the method's own (or None), then the EMA's update."""
        if not isinstance(self.averager, EMA):
            return method_after_step

        def both(step: int) -> None:
            if method_after_step is not None:
                method_after_step(step)
            self.averager.update()

        return both

    def checkpoints(self, checkpoints):
        """`checkpoints` (a `charformer.train.Checkpointer`) writing OUT/best with the averaged weights (the ones
        just evaluated) and OUT/last with the averager's state beside the raw weights."""
        return checkpoints if self.averager is None else _AveragedCheckpoints(checkpoints, self.averager)

    def restore(self, trainer_tensors: dict) -> None:
        """Take the averager's state back from OUT/last's trainer tensors (--resume)."""
        if self.averager is not None:
            self.averager.load_state_tensors(trainer_tensors)

    def summary(self) -> dict:
        """results.json: every toolbox option, as used."""
        return {"toolbox": asdict(self.cfg)}


def ewc_losses(job, cfg: ToolboxConfig, *, batch_size: int, seed: int):
    """The batch losses whose squared gradients estimate EWC's Fisher information: for classify from a
    fine-tuned classifier, the earlier task's cross-entropy on --ewc-data (its labelled training file) through its
    head (`charformer.finetuning.continual`); otherwise the body's own language-model loss on --ewc-data text.
    Raises CharformerError for text shorter than one block."""
    if job.previous is not None:
        objective = job.previous.objective(cfg.ewc_data, job.vocab, block_size=job.body.cfg.block_size,
                                           batch_size=batch_size, eval_batch_size=batch_size)
        return previous_task_losses(job.previous, job.body, objective, n_batches=cfg.ewc_batches, seed=seed)
    tokens = encode_array(job.vocab, read_corpus([cfg.ewc_data]))
    if len(tokens) < job.body.cfg.block_size + 1:
        raise CharformerError(f"{cfg.ewc_data}: {len(tokens)} characters, fewer than one block of "
                              f"{job.body.cfg.block_size + 1}")
    return lm_batch_losses(job.body, tokens, n_batches=cfg.ewc_batches, batch_size=batch_size, seed=seed)


def load_teacher(job, path: str):
    """The distillation teacher at `path` for `job` (a cws or ner job of `charformer.tasks.jobs`), on the
    device of the job's model, and the `vocab_map` from the job's ids to the teacher's. Raises CharformerError
    for another task, or a teacher that does not fit the student (`check_teacher`)."""
    task = job.description["task"]
    if task["task"] not in ("cws", "ner"):
        raise CharformerError(f"--distill-from is for tagging (cws, ner), not --task {task['task']}")
    teacher, vocab, teacher_task = load_task_checkpoint(path, next(job.model.parameters()).device)
    check_teacher(teacher, teacher_task, task, job.body.cfg.block_size, path)
    return teacher, vocab_map(job.vocab, vocab)


@dataclass
class _AveragedCheckpoints:
    """`Toolbox.checkpoints`: a `Checkpointer` around another that saves the averaged weights as best."""

    inner: object  # the run's own Checkpointer
    averager: EMA | LastCheckpoints

    def save_last(self, path, trainer_state, trainer_tensors, weights) -> None:
        self.inner.save_last(path, trainer_state, {**trainer_tensors, **self.averager.state_tensors()}, weights)

    def save_best(self, path, weights) -> None:
        with swapped(self.averager.params, self.averager.weights()):
            self.inner.save_best(path, weights)
