"""Viterbi decoding (Viterbi 1967): the highest-scoring tag sequence under per-character scores plus
start / transition / end scores, by dynamic programming in O(T K^2).

Constraining the output to valid sequences (no I-PER after O, no B followed by S under BMES) costs nothing: a
forbidden start, transition or end scores -inf, so no path through it can win while a valid path exists, and
with start, transitions and ends taken from `charformer.tasks.schemes.transition_masks` one always does.
A plain softmax tagger decodes with its log-probabilities and 0 / -inf transitions; a CRF with its learned ones.
"""

from __future__ import annotations

import torch


def viterbi(emissions: torch.Tensor, lengths: torch.Tensor, start: torch.Tensor, trans: torch.Tensor,
            end: torch.Tensor) -> list[list[int]]:
    """Best tag path of each sequence.

    emissions ``(B, T, K)`` float scores (positions past a sequence's length are ignored); lengths ``(B,)``
    int; start ``(K,)``, trans ``(K, K)`` (``[i, j]``: score of tag j right after tag i) and end ``(K,)`` float
    scores, -inf where forbidden. Returns B lists of tag indices, each as long as its sequence.
    """
    emissions = emissions.float()
    batch, length, _ = emissions.shape
    if length == 0:
        return [[] for _ in range(batch)]
    lengths = lengths.to(emissions.device)
    score = start + emissions[:, 0]  # (B, K): best score of a path ending in each tag
    backpointers = []
    for t in range(1, length):
        best, arg = (score[:, :, None] + trans).max(dim=1)  # over the previous tag: (B, K)
        active = (t < lengths)[:, None]
        score = torch.where(active, best + emissions[:, t], score)  # finished sequences keep their score
        backpointers.append(arg)
    current = (score + end).argmax(dim=-1)  # (B,) last tag of each best path
    path = torch.zeros(batch, length, dtype=torch.long, device=emissions.device)
    for t in range(length - 1, 0, -1):
        path[:, t] = current
        previous = backpointers[t - 1].gather(1, current[:, None]).squeeze(1)
        current = torch.where(t < lengths, previous, current)  # walk back only inside the sequence
    path[:, 0] = current
    return [row[:n].tolist() for row, n in zip(path.cpu(), lengths.tolist())]
