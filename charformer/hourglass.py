"""Hourglass shortening: the middle layers of the model run over ceil(T / K) positions instead of T.

Character sequences are long, and a transformer layer costs in proportion to the positions it sees. The hourglass
transformer (Nawrot et al. 2021, "Hierarchical Transformers Are More Efficient Language Models") keeps the first
and last layers at full character resolution and runs the layers between them over groups of K characters::

    x  (B, T, C) ── pre layers ──┬──────────────────────────────────────────── + ── post layers ── head
                                 │                                             │
                            [shift right K-1]  (causal only)                   │
                                 │                                             │
                            shorten by K  ──  z (B, ceil(T/K), C)              │
                                               │                               │
                                          mid layers ── z' ── z' - z ── lengthen by K

Shortening (``shorten_pool``):

* ``"mean"``: the mean of each group of K vectors.
* ``"linear"``: a learned map of the K concatenated vectors (K*C -> C), initialised to the mean.
* ``"gbst"``: gradient-based subword tokenization (Tay et al. 2021, "Charformer"): for every block size
  b = 1..M the sequence is mean-pooled over blocks of b characters and each character takes its block's vector;
  a learned score per character and block size, softmaxed over the sizes, mixes the M candidates; the mix is then
  mean-pooled by K. Its blocks look ahead, so it is for bidirectional encoders only. (Charformer's optional
  convolution before pooling and its score calibration are left out.)

Lengthening (``shorten_upsample``): ``"repeat"`` copies each group's vector to its K characters; ``"linear"``
maps it to K different vectors (C -> K*C), initialised to the copy. What is lengthened is the *update* the
middle layers made (``z' - z``), added to the full-resolution residual stream from before shortening; with K = 1,
mean and repeat, the hourglass is therefore exactly the plain model (`tests/test_hourglass.py`).

Causality: group j is made of characters jK-K+1 .. jK (the sequence shifted right by K-1, zeros in front), and
character t reads group floor(t/K), whose last character floor(t/K)*K <= t: no character sees a later one, for
any T, multiple of K or not. A bidirectional model groups characters jK .. jK+K-1 (zeros after the end).

Cached decoding keeps, besides the key/value caches (full resolution for the outer layers, ceil(T/K) entries for
the middle ones), the pre-layer outputs of the characters of the group not yet complete and the middle-layer
update of the latest complete group (`ShortenState`); a group enters the middle layers when its last character
arrives.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

SHORTEN_POOLS = ("mean", "linear", "gbst")
SHORTEN_UPSAMPLES = ("repeat", "linear")


class ShortenState:
    """Where a causal hourglass stands in a sequence decoded piece by piece.

    pending: ``(B, p, C)`` pre-layer outputs of the characters after the last complete group (at the start, the
        K-1 zero vectors of the right shift). last: ``(B, 1, C)`` middle-layer update of the latest complete
        group, or None before the first. groups: how many groups are complete.
    """

    def __init__(self, batch_size: int, k: int, d_model: int, device, dtype):
        self.pending = torch.zeros(batch_size, k - 1, d_model, device=device, dtype=dtype)
        self.last: torch.Tensor | None = None
        self.groups = 0


class Hourglass(nn.Module):
    """The shortening and lengthening maps of an hourglass model (the layers themselves stay in the model's
    ``blocks``). K = `cfg.shorten`; C = `cfg.d_model`."""

    def __init__(self, cfg):
        super().__init__()
        self.k, self.causal, self.d_model = cfg.shorten, cfg.causal, cfg.d_model
        d, k = cfg.d_model, cfg.shorten
        self.pool = cfg.shorten_pool
        self.pool_proj = nn.Linear(k * d, d, bias=False) if self.pool == "linear" else None
        self.up_proj = nn.Linear(d, k * d, bias=False) if cfg.shorten_upsample == "linear" else None
        self.gbst_score = nn.Linear(d, 1, bias=False) if self.pool == "gbst" else None
        self.gbst_blocks = cfg.gbst_blocks

    def reset_parameters(self) -> None:
        """Start the learned maps as mean pooling and repeat upsampling (called after the model's init)."""
        eye = torch.eye(self.d_model)
        with torch.no_grad():
            if self.pool_proj is not None:
                self.pool_proj.weight.copy_(eye.repeat(1, self.k) / self.k)  # (C, K*C): y = mean of the K slots
            if self.up_proj is not None:
                self.up_proj.weight.copy_(eye.repeat(self.k, 1))  # (K*C, C): each slot a copy

    def shorten(self, x: torch.Tensor, lengths: torch.Tensor | None, state: ShortenState | None):
        """Group the pre-layer outputs x ``(B, T, C)`` by K. Returns ``(z, z_lengths)``: z ``(B, n, C)`` the new
        complete groups (n = ceil(T/K) without a state; with one, those completed by these characters, maybe
        0), and z_lengths ``(B,)`` = ceil(lengths / K) or None. Updates `state`."""
        B, T, C = x.shape
        if lengths is not None:
            # Padding must not leak into the last real group (a bidirectional group spans the end of a sequence):
            # padded characters count as the zeros a sequence alone is padded with, before and after GBST.
            real = (torch.arange(T, device=x.device)[None, :] < lengths.to(x.device)[:, None])[..., None]
            x = x.masked_fill(~real, 0.0)
        if self.pool == "gbst":
            x = self._gbst(x)
            if lengths is not None:
                x = x.masked_fill(~real, 0.0)
        if self.causal:
            if state is None:
                state = ShortenState(B, self.k, C, x.device, x.dtype)
            buf = torch.cat([state.pending, x], dim=1)  # shifted right by K-1 (zeros, or the pending characters)
            n = buf.shape[1] // self.k
            groups, state.pending = buf[:, : n * self.k], buf[:, n * self.k :]
        else:
            n = math.ceil(T / self.k)
            groups = F.pad(x, (0, 0, 0, n * self.k - T))  # zeros after the end
        groups = groups.reshape(B, n, self.k, C)
        if self.pool_proj is not None:
            z = self.pool_proj(groups.flatten(2))
        else:
            z = groups.mean(dim=2)
        z_lengths = None if lengths is None else torch.div(lengths + self.k - 1, self.k, rounding_mode="floor")
        return z, z_lengths

    def lengthen(self, delta: torch.Tensor, start: int, T: int, state: ShortenState | None) -> torch.Tensor:
        """Spread the middle-layer updates delta ``(B, n, C)`` of the new groups back to characters
        start..start+T-1: returns ``(B, T, C)``, character t taking group floor(t/K). Updates `state`."""
        first = 0  # index of the group delta[:, 0] stands for
        if state is not None:
            first, n_new = state.groups, delta.shape[1]
            if state.last is not None:  # characters before the next group boundary still read the latest group
                delta, first = torch.cat([state.last, delta], dim=1), first - 1
            state.groups += n_new
            state.last = delta[:, -1:]
        if self.up_proj is not None:
            spread = self.up_proj(delta).unflatten(-1, (self.k, -1)).flatten(1, 2)  # (B, n*K, C)
        else:
            spread = delta.repeat_interleave(self.k, dim=1)  # (B, n*K, C)
        offset = start - first * self.k
        return spread[:, offset : offset + T]

    def _gbst(self, x: torch.Tensor) -> torch.Tensor:
        """GBST candidate mixing: x ``(B, T, C)`` -> ``(B, T, C)``, each character a score-weighted mix of the
        means of the blocks of sizes 1..M that contain it."""
        B, T, C = x.shape
        candidates = []
        for b in range(1, self.gbst_blocks + 1):
            n = math.ceil(T / b)
            blocks = F.pad(x, (0, 0, 0, n * b - T)).reshape(B, n, b, C).mean(dim=2)  # (B, n, C)
            candidates.append(blocks.repeat_interleave(b, dim=1)[:, :T])
        cand = torch.stack(candidates, dim=2)  # (B, T, M, C)
        weights = self.gbst_score(cand).softmax(dim=2)  # (B, T, M, 1): over block sizes
        return (weights * cand).sum(dim=2)
