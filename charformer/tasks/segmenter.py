"""Word segmentation as a library: a segmentation checkpoint, a user dictionary and the protection of numbers,
Latin words, URLs and e-mail addresses, in one object.

    from charformer.tasks.segmenter import Segmenter
    seg = Segmenter.load("out/ctb6_cws", user_dict="my_words.txt")       # force mode, protection on
    seg.cut("深度求索发布了COVID-19疫苗报告")                                   # ['深度求索', '发布', ...]
    seg.segment(["第一句", "第二句"])                                         # one word list per text
    Segmenter.load("out/mc_cws", standard="ctb6")                # a multi-criteria model: choose its standard

The dictionary and the protected runs are constraints on the tag lattice (`charformer.tasks.constraints`),
applied as a score bias when each sentence is decoded, so they hold by construction. An ensemble of
segmentation models (`Segmenter.ensemble`) decodes the mean of their per-character tag probabilities
(`charformer.finetuning.ensemble`) under the same bias. A multi-criteria segmenter (one model trained on several
segmentation standards, `charformer.tasks.criteria`) segments by the standard chosen with `standard`; every
member of an ensemble must know it. `charformer.segment` is the command-line face of this class.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

from ..errors import CharformerError
from ..finetuning.ensemble import Member, ensemble_tag_paths
from ..quantize import inference_device, prepare_for_inference
from ..vocab import CharVocab
from .checkpoint import load_task_checkpoint
from .constraints import BMES, DEFAULT_BONUS, MODES, lattice_bias
from .criteria import choose_standard
from .heads import Tagger
from .lexicon import Lexicon, read_lexicon
from .schemes import spans_to_words, tags_to_spans


def _check_segmenter(model: Tagger) -> None:
    if tuple(model.head.tags) != BMES:
        raise CharformerError(f"not a word segmenter: its tags are {model.head.tags}, expected {list(BMES)}")


class Segmenter:
    """A segmentation model with its decoding constraints.

    `user_dict`: a `Lexicon`, or the path of a dictionary file (`charformer.tasks.lexicon`), or None.
    `dict_mode`: ``force`` (each leftmost-longest match is one word of the output) or ``prefer`` (its tags
    get ``weight x dict_bonus`` nats). `protect`: never cut inside numbers, Latin words, URLs and e-mail
    addresses. `batch_size`: windows per forward pass. `standard`: for a multi-criteria segmenter, the name of
    the standard to follow (one of ``model.standards``); None for any other. Raises CharformerError for a model
    that is not a BMES word segmenter, an unknown mode or a bonus that is not a finite number > 0, a bad
    dictionary file, or a standard that the model does not take (`criteria.choose_standard`).
    """

    def __init__(self, model: Tagger, vocab: CharVocab, *, overlap: int, user_dict: Lexicon | str | Path | None = None,
                 dict_mode: str = "force", dict_bonus: float = DEFAULT_BONUS, protect: bool = True,
                 batch_size: int = 64, standard: str | None = None, where: str = "the segmenter"):
        _check_segmenter(model)
        self.standard = choose_standard(model.standards, standard, where)
        if dict_mode not in MODES:
            raise CharformerError(f"the dictionary mode must be one of {', '.join(MODES)}, got {dict_mode!r}")
        if not (math.isfinite(dict_bonus) and dict_bonus > 0):
            raise CharformerError(f"the dictionary bonus must be a finite number > 0, got {dict_bonus!r}")
        self.model, self.vocab, self.overlap, self.batch_size = model, vocab, overlap, batch_size
        self.members: list[Member] = [(model, vocab, None)]  # more than one: an ensemble (`ensemble`)
        self.lexicon = read_lexicon(user_dict) if isinstance(user_dict, (str, Path)) else user_dict
        self.dict_mode, self.dict_bonus, self.protect = dict_mode, dict_bonus, protect

    @classmethod
    def load(cls, ckpt: str | Path, *, base: str | Path | None = None, device: str = "auto", int8: bool = False,
             **options) -> Segmenter:
        """The segmentation checkpoint (or adapter) at `ckpt`, ready for inference on `device` (``auto``,
        ``cpu``, ``cuda``; `int8` as in `charformer.quantize`); `options` as for the constructor. Raises
        CharformerError for a checkpoint of another task."""
        model, vocab, task = load_task_checkpoint(ckpt, device=inference_device(device, int8), base=base)
        if task["task"] != "cws":
            raise CharformerError(f"{ckpt}: a {task['task']} model, not a word segmenter")
        return cls(prepare_for_inference(model, int8=int8), vocab, overlap=task["overlap"], where=str(ckpt), **options)

    @classmethod
    def ensemble(cls, members: Sequence[Member], names: Sequence[str] = (), **options) -> Segmenter:
        """The segmentation models `members` (``(model, vocab, task description)`` triples, as
        `charformer.tasks.tool.load_for` gives and checks them; `names`, their paths, name them in errors)
        answering together: one member is a plain Segmenter; several decode the mean of their per-character tag
        probabilities. Windows overlap as the first member's task says; `options` as for the constructor.
        Raises CharformerError as the constructor does, for any member."""
        names = list(names) or [f"ensemble member {i + 1}" for i in range(len(members))]
        first, *rest = members
        segmenter = cls(first[0], first[1], overlap=first[2]["overlap"], where=names[0], **options)
        for (model, _, _), name in zip(rest, names[1:]):
            _check_segmenter(model)
            choose_standard(model.standards, segmenter.standard, name)
        segmenter.members = list(members)
        return segmenter

    def bias(self, text: str) -> torch.Tensor | None:
        """The decoding constraints of `text` (`lattice_bias`), ``(len(text), 4)`` or None."""
        return lattice_bias(text, lexicon=self.lexicon, mode=self.dict_mode, bonus=self.dict_bonus,
                            protect=self.protect)

    def segment(self, texts: Sequence[str], *, progress: bool = False) -> list[list[str]]:
        """The words of each text; ``"".join(words) == text`` always."""
        with torch.inference_mode():
            paths = ensemble_tag_paths(self.members, texts, batch_size=self.batch_size, overlap=self.overlap,
                                       progress=progress, bias=[self.bias(t) for t in texts], standard=self.standard)
        return [spans_to_words(text, tags_to_spans([BMES[i] for i in path])) for text, path in zip(texts, paths)]

    def cut(self, text: str) -> list[str]:
        """The words of one text."""
        return self.segment([text])[0]
