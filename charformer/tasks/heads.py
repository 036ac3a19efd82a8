"""Task heads on the character encoder, and the two task models (encoder body + head).

    characters ─> CharTransformer.hidden_states ─> (B, T, C) ─┬─> TokenTaggingHead ─> tag scores (B, T, K)
                  (padding masked by `lengths`)               └─> SequenceClassificationHead ─> (D, L)

* Token tagging (Xue 2003 for segmentation as tagging; the BERT recipe of Devlin et al. 2019 for the head):
  dropout and a linear layer give K tag scores per character. Loss: cross-entropy, or the negative
  log-likelihood of a linear-chain CRF (``crf=True``), summed over the real characters and divided by their
  number, so padding never counts. Decoding: Viterbi restricted to valid tag sequences.
* Sequence classification: the character features of a text are pooled into one vector, either the mean
  over its real characters or the feature of the [CLS] that starts each chunk, then dropout and a linear
  layer. A text longer than a block is read as several chunks (each ``[CLS] + chunk``) whose features are
  pooled together, so no character is cut off.

The models return the loss when given targets, so that `charformer.train.fit` (possibly through DDP or
torch.compile) only ever calls ``model(...)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import IGNORE_INDEX
from ..model import CharTransformer
from .crf import CRF
from .criteria import CriterionMarkers, marker_width
from .schemes import transition_masks
from .viterbi import viterbi


def _linear(d_in: int, d_out: int) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)
    nn.init.normal_(layer.weight, std=0.02)  # the body's initialisation (GPT-2), so untrained heads start small
    nn.init.zeros_(layer.bias)
    return layer


def real_positions(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """``(B, width)`` bool: True at the first ``lengths[b]`` positions of each row."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


class TokenTaggingHead(nn.Module):
    """K tag scores per character, with the loss and the constrained decoder of `scheme` over `tags`."""

    def __init__(self, d_model: int, tags: list[str], scheme: str, *, crf: bool = False, dropout: float = 0.1):
        super().__init__()
        self.tags, self.scheme = list(tags), scheme
        self.dropout = nn.Dropout(dropout)
        self.proj = _linear(d_model, len(tags))
        start_ok, trans_ok, end_ok = transition_masks(self.tags, scheme)
        self.crf = CRF(start_ok, trans_ok, end_ok) if crf else None
        # For the softmax tagger: log-probabilities plus 0 where allowed, -inf where forbidden.
        for name, ok in (("start_scores", start_ok), ("trans_scores", trans_ok), ("end_scores", end_ok)):
            self.register_buffer(name, torch.zeros(ok.shape).masked_fill(~ok, float("-inf")), persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden ``(B, T, C)`` -> tag scores ``(B, T, K)`` (float32)."""
        return self.proj(self.dropout(hidden)).float()

    def loss(self, scores: torch.Tensor, tags: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Mean loss (nats) per real character. tags ``(B, T)`` int, read only at real positions."""
        real = real_positions(lengths, scores.shape[1])
        n_real = real.sum().clamp(min=1)
        if self.crf is not None:
            return self.crf.nll(scores, tags, lengths).sum() / n_real
        targets = tags.masked_fill(~real, IGNORE_INDEX)
        return F.cross_entropy(scores.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum") / n_real

    def decode(self, scores: torch.Tensor, lengths: torch.Tensor, bias: torch.Tensor | None = None) -> list[list[int]]:
        """Best valid tag-index path of each sequence. `bias` ``(B, T, K)``, if given, is added to the scores the
        path is chosen by (the CRF's emissions, or the softmax tagger's log-probabilities): -inf removes a tag
        from the lattice (`charformer.tasks.constraints`)."""
        emissions = scores if self.crf is not None else scores.log_softmax(-1)
        if bias is not None:
            emissions = emissions + bias
        if self.crf is not None:
            return self.crf.decode(emissions, lengths)
        return viterbi(emissions, lengths, self.start_scores, self.trans_scores, self.end_scores)


def check_pooling(pooling: str) -> None:
    """Raise ValueError unless `pooling` is ``"mean"`` (over a text's characters) or ``"cls"`` (its [CLS]
    position)."""
    if pooling not in ("mean", "cls"):
        raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")


class SequenceClassificationHead(nn.Module):
    """Pools chunk features into one vector per text (``"mean"`` over real characters, or ``"cls"``) and
    scores the L labels."""

    def __init__(self, d_model: int, labels: list[str], *, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        check_pooling(pooling)
        self.labels, self.pooling = list(labels), pooling
        self.dropout = nn.Dropout(dropout)
        self.proj = _linear(d_model, len(labels))

    def forward(self, hidden: torch.Tensor, lengths: torch.Tensor, text_of_row: torch.Tensor, n_texts: int) -> torch.Tensor:
        """hidden ``(R, T, C)`` of R chunks, each ``[CLS] + characters`` of length ``lengths[r]``;
        text_of_row ``(R,)`` says which of the n_texts texts each chunk belongs to. Returns ``(n_texts, L)``."""
        if self.pooling == "cls":
            vectors, weights = hidden[:, 0].float(), torch.ones(len(hidden), device=hidden.device)
        else:
            chars = real_positions(lengths, hidden.shape[1])
            chars[:, 0] = False  # the [CLS] is not a character of the text
            vectors = (hidden.float() * chars[:, :, None]).sum(1)
            weights = chars.sum(1).float()
        sums = torch.zeros(n_texts, hidden.shape[-1], device=hidden.device).index_add_(0, text_of_row, vectors)
        counts = torch.zeros(n_texts, device=hidden.device).index_add_(0, text_of_row, weights)
        return self.proj(self.dropout(sums / counts.clamp(min=1)[:, None])).float()


class Tagger(nn.Module):
    """Body + token tagging head, and for a multi-criteria segmenter a marker per standard (`markers`,
    `charformer.tasks.criteria`). ``forward(ids (B, T), lengths (B,))`` -> tag scores ``(B, T, K)``; with
    ``tags`` ``(B, T)`` -> the mean loss per real character; a multi-criteria model also takes ``standards``
    ``(B,)`` int64, the standard of each row (indices into `standards`), and T <= `window`. Raises ValueError
    when ``standards`` is given to a model without markers or missing for one with them."""

    def __init__(self, body: CharTransformer, head: TokenTaggingHead, standards: Sequence[str] = ()):
        super().__init__()
        self.body, self.head = body, head
        self.markers = CriterionMarkers(standards, body.cfg.d_model) if standards else None

    @property
    def standards(self) -> list[str]:
        """The standards' names (multi-criteria), else []."""
        return [] if self.markers is None else self.markers.standards

    @property
    def window(self) -> int:
        """Characters per row: the block, less the marker's position in a multi-criteria model."""
        return marker_width(self.body.cfg.block_size, self.standards)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, tags: torch.Tensor | None = None,
                standards: torch.Tensor | None = None) -> torch.Tensor:
        if (standards is None) != (self.markers is None):
            raise ValueError("a multi-criteria tagger needs the standard of each row, any other tagger none")
        if self.markers is None:
            hidden = self.body.hidden_states(ids, lengths=lengths)
        else:
            hidden = self.markers.hidden_states(self.body, ids, lengths, standards)
        scores = self.head(hidden)
        return scores if tags is None else self.head.loss(scores, tags, lengths)


class Classifier(nn.Module):
    """Body + sequence classification head. ``forward(ids (D, N, T), lengths (D, N))``: D texts of up to N
    chunks (unused chunks have length 0) -> label scores ``(D, L)``; with ``labels`` ``(D,)`` -> the mean
    cross-entropy per text."""

    def __init__(self, body: CharTransformer, head: SequenceClassificationHead):
        super().__init__()
        self.body, self.head = body, head

    @property
    def chunk_block(self) -> int:
        """Width of the ``[CLS] + chunk`` rows this model reads (`objectives.chunk_batch`)."""
        return self.body.cfg.block_size

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        n_texts, n_chunks, width = ids.shape
        used = lengths.flatten() > 0
        text_of_row = torch.arange(n_texts, device=ids.device).repeat_interleave(n_chunks)[used]
        rows_lengths = lengths.flatten()[used]
        hidden = self.body.hidden_states(ids.reshape(-1, width)[used], lengths=rows_lengths)
        scores = self.head(hidden, rows_lengths, text_of_row, n_texts)
        return scores if labels is None else F.cross_entropy(scores, labels)
