"""Few-shot classification as a cloze test: the masked-LM head fills a blank, and words stand for labels.

PET, Pattern-Exploiting Training (Schick & Schütze 2021, "Exploiting Cloze Questions for Few Shot Text
Classification and Natural Language Inference"): instead of a new, randomly initialised classification head,
which needs many examples to learn, the text is put into a *pattern* with a blank, and each label has a
*verbaliser*, the word that fills the blank for it:

    pattern     "{text}总之很[MASK]。"          verbalisers   1 -> 好,  0 -> 差
    row         这家酒店干净安静 总之很 [M] 。   score(label) = log P_MLM(verbaliser's character at [M])

The label scores are the masked-LM head's log-probabilities of each verbaliser's characters at the blank
(summed over its characters when a verbaliser has k > 1: the pattern's one ``[MASK]`` stands for k masks);
a softmax over the labels gives the prediction, and fine-tuning trains the whole encoder, its masked-LM head
included, with cross-entropy over these scores. Before any training this is already a zero-shot classifier
(``python -m charformer.zeroshot``).

A text longer than a block is read as chunks, each put into the pattern; a text's label scores are the mean
over its chunks. The model takes the same batches as `charformer.tasks.heads.Classifier` (``[CLS] + chunk``
rows, made with chunks of `chunk_block` - 1 characters so that the pattern fits), so the classification
objective, evaluation and ``python -m charformer.classify`` serve it unchanged.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import read_text, split_lines
from ..errors import CharformerError
from ..model import CharTransformer, ModelConfig
from ..vocab import MASK_ID, UNK_ID, CharVocab

BLANK, TEXT = "[MASK]", "{text}"


def read_verbalizers(path: str | Path) -> dict[str, str]:
    """``LABEL<TAB>VERBALISER`` per line (a line with no TAB: the label is its own verbaliser), in file order.
    Raises CharformerError naming the line for an empty field, a repeated label, or verbalisers of unequal
    length (they fill the same blank)."""
    out: dict[str, str] = {}
    for n, (line, _) in enumerate(split_lines(read_text(path)), 1):
        if not line.strip():
            continue
        label, _, word = line.partition("\t")
        word = word if "\t" in line else label
        if not label or not word:
            raise CharformerError(f"{path}:{n}: expected LABEL<TAB>VERBALISER, got {line!r}")
        if label in out:
            raise CharformerError(f"{path}:{n}: label {label!r} given twice")
        if out and len(word) != len(next(iter(out.values()))):
            raise CharformerError(f"{path}:{n}: verbaliser {word!r} has {len(word)} characters, the first one "
                                  f"{len(next(iter(out.values())))}: they must fill the same blank")
        out[label] = word
    if len(out) < 2:
        raise CharformerError(f"{path}: needs at least two labels, found {len(out)}")
    return out


def encode_pattern(pattern: str, verbalizers: dict[str, str], vocab: CharVocab) -> dict:
    """The pattern and verbalisers as ids, as stored in a checkpoint's task description: ``prefix_ids`` and
    ``suffix_ids`` (the pattern before and after ``{text}``, its blank as k `MASK_ID`), ``verbalizer_ids``
    (L lists of k ids, in label order). Raises CharformerError for a pattern without exactly one ``{text}`` and
    one ``[MASK]``, or a verbaliser character the vocabulary lacks (its score would be [UNK]'s)."""
    if pattern.count(TEXT) != 1 or pattern.count(BLANK) != 1:
        raise CharformerError(f"--pattern needs exactly one {TEXT} and one {BLANK}, got {pattern!r}")
    k = len(next(iter(verbalizers.values())))
    before, after = pattern.split(TEXT)

    def ids(part: str) -> list[int]:
        left, blank, right = part.partition(BLANK)
        return vocab.encode_aligned(left) + ([MASK_ID] * k if blank else []) + vocab.encode_aligned(right)

    verbal = {label: vocab.encode_aligned(word) for label, word in verbalizers.items()}
    unknown = [word for label, word in verbalizers.items() if UNK_ID in verbal[label]]
    if unknown:
        raise CharformerError(f"verbalisers {unknown} have characters outside the model's vocabulary")
    return {"pattern": pattern, "verbalizers": verbalizers, "prefix_ids": ids(before), "suffix_ids": ids(after),
            "verbalizer_ids": list(verbal.values())}


class ClozeHead(nn.Module):
    """No weights of its own: it averages the label scores of a text's chunks, and holds the labels, the
    pattern's ids and the verbalisers' ids (buffers, not saved: the task description in config.json holds
    them)."""

    def __init__(self, labels: list[str], cloze: dict):
        super().__init__()
        self.labels = list(labels)
        self.register_buffer("prefix", torch.tensor(cloze["prefix_ids"], dtype=torch.long), persistent=False)
        self.register_buffer("suffix", torch.tensor(cloze["suffix_ids"], dtype=torch.long), persistent=False)
        self.register_buffer("verbalizers", torch.tensor(cloze["verbalizer_ids"], dtype=torch.long), persistent=False)

    def forward(self, row_scores: torch.Tensor, text_of_row: torch.Tensor, n_texts: int) -> torch.Tensor:
        """Label scores ``(n_texts, L)``: the mean of row_scores ``(R, L)`` over each text's chunks
        (text_of_row ``(R,)``: which text each row is a chunk of)."""
        device = row_scores.device
        sums = torch.zeros(n_texts, row_scores.shape[1], device=device).index_add_(0, text_of_row, row_scores)
        counts = torch.zeros(n_texts, device=device).index_add_(0, text_of_row, torch.ones_like(row_scores[:, 0]))
        return sums / counts.clamp(min=1)[:, None]


def patterned_rows(chars: torch.Tensor, lengths: torch.Tensor, prefix: torch.Tensor,
                   suffix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``prefix + chars[r, :lengths[r]] + suffix``, right-padded: ids ``(R, P + W + S)`` and lengths
    ``(R,)``, from chars ``(R, W)`` right-padded character ids."""
    R, W = chars.shape
    P, S = len(prefix), len(suffix)
    rows = torch.zeros(R, P + W + S, dtype=torch.long, device=chars.device)
    rows[:, :P] = prefix
    keep = torch.arange(W, device=chars.device)[None, :] < lengths[:, None]
    rows[:, P : P + W] = chars.masked_fill(~keep, 0)
    at = P + lengths[:, None] + torch.arange(S, device=chars.device)[None, :]  # (R, S): right after each text
    rows.scatter_(1, at, suffix.expand(R, S))
    return rows, P + lengths + S


def masked_verbalizer_scores(body: CharTransformer, rows: torch.Tensor, lengths: torch.Tensor,
                             verbalizers: torch.Tensor) -> torch.Tensor:
    """``(R, L)`` label scores from a masked LM: the sum over the k blanks (`MASK_ID`, k per row) of the
    log-probability (nats) of each label's verbaliser character there; verbalizers ``(L, k)``."""
    blanks = rows == MASK_ID
    logp = F.log_softmax(body(rows, lengths=lengths, select=blanks).float(), -1)  # (R * k, V)
    logp = logp.view(len(rows), verbalizers.shape[1], -1)  # (R, k, V)
    k_index = torch.arange(verbalizers.shape[1], device=rows.device)
    return logp[:, k_index[None, :], verbalizers].sum(-1)  # (R, L, k) summed over k


def causal_verbalizer_scores(body: CharTransformer, rows: torch.Tensor, lengths: torch.Tensor,
                             verbalizers: torch.Tensor) -> torch.Tensor:
    """``(R, L)`` label scores from a causal LM: each row is read once per label with the blanks filled by its
    verbaliser, and the score is the log-probability (nats) of those k characters given what precedes them."""
    (L, k), R = verbalizers.shape, len(rows)
    blanks = rows == MASK_ID
    filled = rows.repeat(L, 1)  # (L * R, T): label-major
    filled[blanks.repeat(L, 1)] = verbalizers.repeat_interleave(R, dim=0).flatten()
    before = blanks.roll(-1, dims=1).repeat(L, 1)  # the position whose logits predict each blank
    logp = F.log_softmax(body(filled, lengths=lengths.repeat(L)).float(), -1)[before]  # (L * R * k, V)
    targets = filled[blanks.repeat(L, 1)]
    return logp.gather(1, targets[:, None]).view(L, R, k).sum(-1).T


class ClozeClassifier(nn.Module):
    """A language model scoring labels through a pattern and verbalisers: a masked LM fills the blank
    (`masked_verbalizer_scores`), a causal one scores each filled-in row (`causal_verbalizer_scores`, for
    zero-shot use; its blank must come after the text). ``forward(ids (D, N, T), lengths
    (D, N))`` on ``[CLS] + chunk`` rows (as `Classifier`) -> label scores ``(D, L)``; with ``labels`` ``(D,)`` ->
    the mean cross-entropy per text."""

    def __init__(self, body: CharTransformer, head: ClozeHead):
        super().__init__()
        if body.cfg.causal and (head.prefix == MASK_ID).any():
            raise CharformerError("a causal LM reads left to right: put the pattern's [MASK] after {text}")
        self.body, self.head = body, head
        self.score_rows = causal_verbalizer_scores if body.cfg.causal else masked_verbalizer_scores
        self.chunk_block = body.cfg.block_size - len(head.prefix) - len(head.suffix)
        if self.chunk_block < 2:
            raise CharformerError(f"the pattern takes {len(head.prefix) + len(head.suffix)} of the "
                                  f"{body.cfg.block_size} positions of a block: no room is left for the text")

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        n_texts, n_chunks, width = ids.shape
        used = lengths.flatten() > 0
        text_of_row = torch.arange(n_texts, device=ids.device).repeat_interleave(n_chunks)[used]
        chars = ids.reshape(-1, width)[used][:, 1:]  # the [CLS] is not part of a pattern
        rows, row_lengths = patterned_rows(chars, lengths.flatten()[used] - 1, self.head.prefix, self.head.suffix)
        scores = self.head(self.score_rows(self.body, rows, row_lengths, self.head.verbalizers), text_of_row, n_texts)
        return scores if labels is None else F.cross_entropy(scores, labels)


def build_cloze_model(body_cfg: ModelConfig, task: dict) -> ClozeClassifier:
    """A cloze classifier with a randomly initialised body, for the task description `task` (``labels`` and
    ``cloze`` from `encode_pattern`)."""
    return ClozeClassifier(CharTransformer(body_cfg), ClozeHead(task["labels"], task["cloze"]))
