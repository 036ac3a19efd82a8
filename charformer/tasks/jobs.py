"""What each fine-tuning task brings to a run of finetune.py: its data, model and objective, and how its
results are saved, reloaded and scored.

finetune.py runs every task the same way (apply the method, score, `fit`, reload the best, score again); a `Job`
holds the parts that differ:

    task         trained model               kept whole in an adapter        scored before and after
    cws, ner     encoder + tagging head      the head                        test: word / entity F1
    classify     encoder + label head        the head                        test: accuracy, macro-F1
    lm           the causal LM itself        nothing (its output layer is    dev, test, original text:
                                             the tied input embedding)       bits/char; a sample

Continued training of a language model (``lm``) on new text is domain adaptation, and it costs something on
the text the model was pretrained on: catastrophic forgetting (McCloskey & Cohen 1989; French 1999). The cost
is measured as bits/char on the pretraining validation text before and after (``--original-val``). Rehearsal
(Robins 1995) keeps a share of every batch on the original corpus (``--rehearsal-data``,
``--rehearsal-share``). The vocabulary stays the base's, so that the embedding, the output layer and any
adapter keep their meaning: a character of the new text that the base never saw reads as [UNK], and the
coverage of every text is reported. The same options serve a classifier that continues a fine-tuned one (an
earlier task, kept as a frozen head): `charformer.finetuning.continual`.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from ..checkpoint import load_weights, read_meta, resolve, save_checkpoint
from ..cli import option
from ..data import encode_array, read_corpus
from ..errors import CharformerError
from ..finetuning.augment import augment as augment_examples
from ..finetuning.continual import PreviousTask, Rehearsal, is_task_checkpoint, load_previous_task
from ..model import CharTransformer, ModelConfig
from ..objectives import CausalLM, lm_scores, rehearsal_rows, sample_text
from ..peft import load_adapted_checkpoint
from ..peft.common import RUNTIME_FIELDS
from ..train import TrainConfig
from ..vocab import CharVocab
from .checkpoint import load_task_checkpoint, pretrained_config, save_task_checkpoint
from .heads import check_pooling
from .criteria import MIX_TEMPERATURE, marker_width
from .model import build_task_model, head_modules
from .objectives import ClassificationObjective, TaggingObjective
from .readers import TOKEN_FORMATS, read_conll, read_cws, read_labeled
from .schemes import SCHEMES, detect_scheme, is_valid, spans_to_words, tag_set

@dataclass
class TaskConfig:
    """How the task's files are read and what head is put on the encoder."""

    sep: str = option(" ", "cws: the word separator, literally or as U+XXXX (U+3000 for a corpus that uses it)")
    scheme: str = option("auto", "ner: BIO, BIOES, BMES, or auto (from the training file's tags)")
    token_format: str = option("auto", "ner: char, char+position (Weibo NER's '叔0', the position is dropped), or "
                                "auto (from the file's first token)")
    label_column: str = option("label", "classify: the label column, a header name or 0-based index")
    text_column: str = option("auto", "classify: the text column, a header name or 0-based index, or auto (the "
                               "other of two columns, else text_a, text, sentence, review, content)")
    delimiter: str = option("auto", "classify: tab, comma, or auto (comma for a .csv file, else tab)")
    crf: bool = option(False, "tagging: a linear-chain CRF output layer instead of per-character softmax")
    pooling: str = option("mean", "classify: a text's vector is the mean over its characters, or 'cls'")
    freeze: str = option("none", "with --method full, keep part of the body fixed: none, embeddings, bottom:N "
                          "(embeddings and the N lowest blocks); 'body' means --method freeze")
    head_lr_scale: float = option(10.0, "the head (and a multi-criteria segmenter's markers) learns at lr x this")
    mix_temperature: float = option(MIX_TEMPERATURE, "cws with several standards (--train NAME=PATH ...): each "
                                    "corpus's share of the batches is proportional to its size ** (1 / T); 1: to "
                                    "its size, inf: equal shares (charformer.tasks.criteria)")
    head_dropout: float = option(0.1, "dropout before the head's linear layer")
    overlap: int | None = option(None, "characters shared by consecutive windows of a sentence longer than a "
                                  "block (None: block_size / 4)")
    eval_batch_size: int = option(64, "windows, texts or (lm) blocks per forward pass when evaluating")

    def __post_init__(self):
        if self.scheme != "auto" and self.scheme not in SCHEMES:
            raise ValueError(f"scheme must be auto or one of {SCHEMES}, got {self.scheme!r}")
        if self.token_format not in TOKEN_FORMATS:
            raise ValueError(f"token_format must be one of {TOKEN_FORMATS}, got {self.token_format!r}")
        check_pooling(self.pooling)
        if self.head_lr_scale <= 0 or self.eval_batch_size < 1 or not 0 <= self.head_dropout < 1:
            raise ValueError("need head_lr_scale > 0, eval_batch_size >= 1 and 0 <= head_dropout < 1")
        if not self.mix_temperature > 0:
            raise ValueError(f"mix_temperature must be > 0 (inf: equal shares), got {self.mix_temperature}")


@dataclass
class ForgettingConfig:
    """What forgetting is measured on, and rehearsal: for --task lm the original corpus of the language model;
    for --task classify from a fine-tuned classifier (--init), that earlier task (`charformer.finetuning.continual`)."""

    original_val: str = option("", "what forgetting is measured on, before and after -- lm: the base's pretraining "
                                "validation text (bits/char); classify after a classifier: the earlier task's "
                                "labelled test file (accuracy with its head). Empty: not measured")
    rehearsal_data: str = option("", "lm: text of the original corpus to rehearse; classify after a classifier: the "
                                  "earlier task's labelled training file (empty: no rehearsal)")
    rehearsal_share: float = option(0.25, "share of every batch drawn from --rehearsal-data")

    def __post_init__(self):
        if not 0 <= self.rehearsal_share < 1:
            raise ValueError(f"rehearsal_share must be in [0, 1), got {self.rehearsal_share}")


@dataclass
class LMConfig:
    """--task lm: the samples shown at each evaluation, and how much dev text it scores."""

    eval_batches: int = option(20, "batches of dev text per periodic evaluation (0: all of it)")
    sample_prompt: str = option("\n", "prompt of the sample printed at each evaluation")
    sample_chars: int = option(200, "characters sampled at each evaluation")

    def __post_init__(self):
        if self.eval_batches < 0 or self.sample_chars < 0:
            raise ValueError("need eval_batches >= 0 and sample_chars >= 0")


@dataclass
class JobSpec:
    """What a fine-tuning run starts from: the task, its files, and the model."""

    task: str  # cws, ner, classify or lm
    train: str | dict[str, str]  # a dict: standard -> path (multi-criteria cws, charformer.tasks.criteria)
    dev: str | dict[str, str]
    test: str | dict[str, str] | None  # optional for lm
    init: str  # a pretrained checkpoint directory, or "scratch"
    model_options: dict[str, Any]  # the model options given; from a checkpoint only RUNTIME_FIELDS may change


@dataclass
class Job:
    """The task-specific parts of a fine-tuning run (see the module docstring)."""

    model: nn.Module  # what fit trains: encoder + head, or the language model itself
    body: CharTransformer  # where the fine-tuning method goes
    vocab: CharVocab
    objective: Any  # for charformer.train.fit
    n_train: int  # training pieces (sentences, texts, blocks) per epoch
    base_dir: Path | None  # the pretrained checkpoint; None from scratch
    description: dict  # {"task": ...}, stored with every checkpoint and adapter
    heads: dict[str, nn.Module]  # modules an adapter stores whole
    head_params: tuple[str, ...]  # body parameters that are the head ("freeze" trains them)
    lr_scale: dict[str, float] | None  # for fit: the head learns faster
    save_full: Callable[..., None]  # (path, extra, trainer_state, trainer_tensors, weights): a complete checkpoint
    load_best: Callable[[Path, torch.device], nn.Module]  # OUT/best (checkpoint or adapter) -> model
    score: Callable[[nn.Module], dict]  # model -> {"test": metrics, ...}, recorded as <name>_before/_after
    results: dict = field(default_factory=dict)  # more results.json entries
    previous: PreviousTask | None = None  # classify from a fine-tuned classifier: the earlier task


def model_config(init: str, options: dict[str, Any], *,
                 fine_tuned: bool = False) -> tuple[ModelConfig, CharVocab | None]:
    """The encoder's config (and, for a checkpoint, its vocabulary; None when building from scratch), from
    the model `options` given; `fine_tuned`: `init` is a task checkpoint (its body's). Raises CharformerError
    for options a checkpoint's architecture fixes, or a task checkpoint when not `fine_tuned`."""
    if init == "scratch":
        try:  # an encoder reads the whole sentence: bidirectional unless told otherwise
            return ModelConfig(**{"causal": False, **options, "vocab_size": 1}), None
        except (TypeError, ValueError) as e:
            raise CharformerError(str(e)) from None
    cfg, vocab = read_meta(init)[1:] if fine_tuned else pretrained_config(init)
    fixed = {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_FIELDS}
    clashes = [f"--{k.replace('_', '-')} {options[k]} (checkpoint: {v})" for k, v in fixed.items()
               if k in options and options[k] != v]
    if clashes:
        raise CharformerError(f"the architecture comes from --init {init}; these options differ: {', '.join(clashes)}")
    free = {k: options[k] for k in RUNTIME_FIELDS if k in options}
    return ModelConfig.from_dict({**cfg.to_dict(), **free}), vocab


# ----------------------------------------------------------------------------------- cws, ner, classify


def read_task_files(task: str, cfg: TaskConfig, paths: dict[str, str]) -> dict[str, list]:
    """Train, dev and test examples (Sentence or Document lists) of `task`."""
    if task == "cws":
        return {name: read_cws(path, cfg.sep) for name, path in paths.items()}
    if task == "ner":
        return {name: read_conll(path, cfg.token_format) for name, path in paths.items()}
    return {name: read_labeled(path, label_column=cfg.label_column, text_column=cfg.text_column,
                               delimiter=cfg.delimiter) for name, path in paths.items()}


def _label_order(labels: set[str]) -> list[str]:
    """Labels sorted as numbers when they all are (0, 1, 2, ..., 10), else as strings."""
    return sorted(labels, key=int) if all(label.lstrip("-").isdigit() for label in labels) else sorted(labels)


def describe_task(task: str, cfg: TaskConfig, data: dict[str, list], block_size: int) -> dict:
    """The task description stored in every checkpoint: what the head predicts and how it decodes."""
    overlap = block_size // 4 if cfg.overlap is None else cfg.overlap
    if not 0 <= overlap < block_size:
        raise CharformerError(f"--overlap must be in [0, block_size={block_size}), got {overlap}")
    train = data["train"]
    if task == "classify":
        labels = _label_order({d.label for d in train})
        for name in ("dev", "test"):
            unseen = [d for d in data[name] if d.label not in labels]
            if unseen:
                print(f"warning: {len(unseen)} {name} texts have a label absent from the training file "
                      f"(first: {unseen[0].where}, {unseen[0].label!r}); they count as errors")
        return {"task": task, "labels": labels, "pooling": cfg.pooling, "head_dropout": cfg.head_dropout}
    if task == "cws":
        scheme, tags = "BMES", tag_set("BMES", [""], outside=False)
    else:
        scheme = detect_scheme(t for s in train for t in s.tags) if cfg.scheme == "auto" else cfg.scheme
        tags = tag_set(scheme, {t for s in train for _, _, t in s.spans})
        invalid = [s for s in train if not is_valid(s.tags, scheme)]
        if invalid:
            print(f"warning: {len(invalid)} training sentences have tag sequences that are not valid {scheme} (first: "
                  f"{invalid[0].where}); their entities were read leniently, like the CoNLL scorer does")
    reading = {"sep": cfg.sep} if task == "cws" else {"token_format": cfg.token_format}
    return {"task": task, "scheme": scheme, "tags": tags, "crf": cfg.crf, "head_dropout": cfg.head_dropout,
            "overlap": overlap, **reading}


def read_corpora(spec: JobSpec, cfg: TaskConfig) -> dict[str | None, dict[str, list]]:
    """The train, dev and test examples of each standard (`charformer.tasks.criteria`: --train NAME=PATH ...),
    or of the one corpus under the key None. Raises CharformerError for several standards outside cws."""
    if not isinstance(spec.train, dict):
        return {None: read_task_files(spec.task, cfg, {"train": spec.train, "dev": spec.dev, "test": spec.test})}
    if spec.task != "cws":
        raise CharformerError(f"several standards (--train NAME=PATH) are for --task cws, not {spec.task}")
    return {name: read_task_files(spec.task, cfg, {"train": spec.train[name], "dev": spec.dev[name],
                                                   "test": spec.test[name]}) for name in spec.train}


def task_job(spec: JobSpec, cfg: TaskConfig, train_cfg: TrainConfig, train_examples: int | None,
             augment: str = "", forgetting: ForgettingConfig | None = None) -> Job:
    """cws, ner or classify: read the files, build encoder + head (from --init or from scratch); for cws with
    several standards, one multi-criteria segmenter (`charformer.tasks.criteria`); for classify from a
    fine-tuned classifier, its body, with the earlier task scored and rehearsed as `forgetting` says
    (`charformer.finetuning.continual`).
    train_examples: train on a random subset of this many training examples (seeded by the training seed; per
    standard). augment: comma-separated augmentations added to that training set
    (`charformer.finetuning.augment`; within each standard)."""
    forgetting = forgetting or ForgettingConfig()
    previous, start = None, None
    if spec.task == "classify" and is_task_checkpoint(spec.init):
        reading = {"label_column": cfg.label_column, "text_column": cfg.text_column, "delimiter": cfg.delimiter}
        previous, start = load_previous_task(spec.init, reading)
    elif forgetting.original_val or forgetting.rehearsal_data:
        raise CharformerError("--original-val and --rehearsal-data are for --task lm, or --task classify from a "
                              "fine-tuned classifier (--init CHECKPOINT of finetune.py)")
    corpora = read_corpora(spec, cfg)
    standards = [name for name in corpora if name is not None]
    for data in corpora.values():
        if train_examples is not None and train_examples < len(data["train"]):
            keep = sorted(random.Random(train_cfg.seed).sample(range(len(data["train"])), train_examples))
            data["train"] = [data["train"][i] for i in keep]

    def joined(split: str) -> list:
        return [x for data in corpora.values() for x in data[split]]

    def by_standard(split: str) -> list | dict[str, list]:
        return {name: corpora[name][split] for name in standards} if standards else corpora[None][split]

    body_cfg, vocab = model_config(spec.init, spec.model_options, fine_tuned=previous is not None)
    if vocab is None:
        vocab = CharVocab.build(x.text for x in joined("train"))
        body_cfg = ModelConfig.from_dict({**body_cfg.to_dict(), "vocab_size": len(vocab)})
    task = describe_task(spec.task, cfg, {split: joined(split) for split in ("train", "dev", "test")},
                         marker_width(body_cfg.block_size, standards))
    if standards:
        task["standards"] = standards
    augmented: dict[str, int] = {}
    if augment:  # label-preserving new examples (charformer.finetuning.augment)
        for data in corpora.values():
            data["train"], made = augment_examples(spec.task, data["train"], augment, train_cfg.seed)
            augmented = {k: augmented.get(k, 0) + n for k, n in made.items()}
    sizes = {"block_size": body_cfg.block_size, "batch_size": train_cfg.batch_size, "eval_batch_size": cfg.eval_batch_size}
    if spec.task == "classify":
        old_rows = rehearsal_rows(forgetting.rehearsal_share if forgetting.rehearsal_data else 0.0,
                                  train_cfg.batch_size)
        objective = ClassificationObjective(task, by_standard("train"), by_standard("dev"), vocab,
                                            **{**sizes, "batch_size": train_cfg.batch_size - old_rows})
        if old_rows:
            old = previous.objective(forgetting.rehearsal_data, vocab, **{**sizes, "batch_size": old_rows})
            objective = Rehearsal(objective, old, previous)
    else:
        words = {name: {w for s in data["train"] for w in spans_to_words(s.text, s.spans)}
                 for name, data in corpora.items()} if spec.task == "cws" else {}
        objective = TaggingObjective(task, by_standard("train"), by_standard("dev"), vocab,
                                     train_words=words if standards else words.get(None),
                                     mix_temperature=cfg.mix_temperature, **sizes)
    for standard, data in corpora.items():
        for name, examples in data.items():
            text = "".join(x.text for x in examples)
            print(f"{f'{standard} ' if standard else ''}{name}: {len(examples):,} "
                  f"{'texts' if spec.task == 'classify' else 'sentences'}, {len(text):,} characters, vocabulary "
                  f"coverage {vocab.coverage(text):.4%}")
    torch.manual_seed(train_cfg.seed)
    model = build_task_model(body_cfg, task)
    base_dir = None if spec.init == "scratch" else resolve(spec.init)
    if start is not None:
        model.body.load_state_dict(start.body.state_dict())
    elif base_dir is not None:
        load_weights(model.body, base_dir)
    original = previous.documents(forgetting.original_val) if previous and forgetting.original_val else None

    def save_full(path, extra, trainer_state, trainer_tensors, weights):
        save_task_checkpoint(path, model, vocab, task, extra=extra, trainer_state=trainer_state,
                             trainer_tensors=trainer_tensors, weights=weights)

    @torch.no_grad()
    def score(m):
        m.eval()  # a multi-criteria model is also scored on dev: per-standard F1 for results.json
        return {"test": objective.score(m, by_standard("test")),
                **({"dev": objective.score(m, by_standard("dev"))} if standards else {}),
                **({"original": objective.score(previous.model(m.body), original)} if original else {})}

    earlier = {"previous_task": {"init": previous.path, "labels": previous.task["labels"],
                                 "rehearsal_rows_per_batch": old_rows},
               "forgetting_options": asdict(forgetting)} if previous else {}
    mixing = {"standards": {name: {"train_examples": len(corpora[name]["train"]), "share": share} for name, share
                            in zip(standards, objective.shares)}} if standards else {}
    return Job(model=model, body=model.body, vocab=vocab, objective=objective, n_train=objective.n_train,
               base_dir=base_dir, description={"task": task}, heads=head_modules(model), head_params=(),
               lr_scale={"head.": cfg.head_lr_scale, "markers.": cfg.head_lr_scale}, save_full=save_full,
               load_best=lambda path, device: load_task_checkpoint(path, device)[0], score=score,
               results={"train_examples": len(joined("train")), "augmented_examples": augmented,
                        "train_pieces": objective.n_train, "head": task, **mixing,
                        "task_options": asdict(cfg), **earlier}, previous=previous)


# ---------------------------------------------------------------------------------------------- lm


def _coverage(vocab: CharVocab, name: str, text: str) -> dict:
    """How much of `text` the vocabulary covers; prints one line."""
    unseen = sorted({c for c in vocab.normalize(text) if c not in vocab})
    share = vocab.coverage(text)
    shown = "".join(c for c in unseen[:20] if c.isprintable())
    print(f"{name}: {len(text):,} characters, vocabulary coverage {share:.4%}"
          + (f"; {len(unseen)} distinct characters unseen by the base read as [UNK] ({shown}...)" if unseen else ""))
    return {"coverage": share, "unseen_distinct": len(unseen)}


def lm_job(spec: JobSpec, cfg: LMConfig, forgetting: ForgettingConfig, train_cfg: TrainConfig,
           eval_batch_size: int) -> Job:
    """Continue training the causal LM of --init on --train, evaluating on --dev (see the module docstring)."""
    if spec.init == "scratch":
        raise CharformerError("--task lm continues a pretrained causal LM: give --init DIR (pretrain.py --out); "
                              "pretrain.py trains one from scratch")
    model_cfg, vocab = model_config(spec.init, spec.model_options)
    if not model_cfg.causal:
        raise CharformerError(f"--init {spec.init}: a bidirectional (masked-LM) model; --task lm continues a causal "
                              "one (pretrain.py --objective clm)")
    paths = {"train": spec.train, "dev": spec.dev, "test": spec.test, "original": forgetting.original_val,
             "rehearsal": forgetting.rehearsal_data}
    texts = {name: read_corpus([path]) for name, path in paths.items() if path}
    coverage = {name: _coverage(vocab, name, text) for name, text in texts.items()}
    tokens = {name: encode_array(vocab, text) for name, text in texts.items()}
    block = model_cfg.block_size
    for name, ids in tokens.items():
        needed = block + 1 if name in ("train", "rehearsal") else 2  # a training window; one scored target
        if len(ids) < needed:
            raise CharformerError(f"{paths[name]}: {len(ids)} characters, fewer than the {needed} needed "
                                  f"(block_size {block})")
    objective = CausalLM(tokens["train"], tokens["dev"], vocab, block_size=block, batch_size=train_cfg.batch_size,
                         eval_batches=cfg.eval_batches, sample_prompt=cfg.sample_prompt, sample_chars=cfg.sample_chars,
                         rehearsal_tokens=tokens.get("rehearsal"), rehearsal_share=forgetting.rehearsal_share)
    torch.manual_seed(train_cfg.seed)
    model = CharTransformer(model_cfg)
    base_dir = resolve(spec.init)
    load_weights(model, base_dir)
    scored = [name for name in ("dev", "test", "original") if name in tokens]

    def save_full(path, extra, trainer_state, trainer_tensors, weights):
        save_checkpoint(path, model, model_cfg, vocab, extra={"objective": "clm", "finetuned_from": str(base_dir),
                                                                **extra},
                        trainer_state=trainer_state, trainer_tensors=trainer_tensors, weights=weights)

    @torch.no_grad()
    def score(m):
        m.eval()
        out = {name: lm_scores(m, tokens[name], block_size=block, batch_size=eval_batch_size) for name in scored}
        if "original" in out:
            out["original_bpc"] = out["original"]["bpc"]
        out["sample"] = sample_text(m, vocab, cfg.sample_prompt, cfg.sample_chars, seed=train_cfg.seed)
        return out

    return Job(model=model, body=model, vocab=vocab, objective=objective,
               n_train=max(1, (len(tokens["train"]) - 1) // block), base_dir=base_dir,
               description={"task": {"task": "lm"}},
               heads={}, head_params=("tok_emb.",), lr_scale=None, save_full=save_full,
               load_best=lambda path, device: load_adapted_checkpoint(path, device)[0], score=score,
               results={"coverage": coverage, "train_chars": len(texts["train"]),
                        "rehearsal_rows_per_batch": objective.rehearsal_rows, "lm_options": asdict(cfg),
                        "forgetting_options": asdict(forgetting)})
