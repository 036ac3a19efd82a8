"""A linear-chain conditional random field over character tags (Lafferty, McCallum & Pereira 2001), the usual
output layer of neural sequence taggers (Lample et al. 2016).

The score of a tag path y over emissions e is ``start[y_0] + sum_t e[t, y_t] + sum_t trans[y_(t-1), y_t] +
end[y_(T-1)]``; the loss is its negative log-likelihood ``log Z - score(gold)``, with the partition function Z
summed over all paths by the forward algorithm (log-sum-exp in place of Viterbi's max). Transitions that the
tagging scheme forbids are pinned at a large negative score, not learned: training puts no probability on them
and decoding (`charformer.tasks.viterbi`, with -inf there) never outputs them. The probability of each tag at
each position over all paths (`marginals`, what a distilled student learns from a CRF teacher) is the
gradient of log Z with respect to the emissions.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .viterbi import viterbi

FORBIDDEN = -1e4  # finite, so log-sum-exp over forbidden entries keeps finite gradients


class CRF(nn.Module):
    """Learned start ``(K,)``, transition ``(K, K)`` and end ``(K,)`` scores over K tags, masked by the allowed
    starts / transitions / ends (bool tensors of the same shapes)."""

    def __init__(self, start_ok: torch.Tensor, trans_ok: torch.Tensor, end_ok: torch.Tensor):
        super().__init__()
        k = trans_ok.shape[0]
        self.start = nn.Parameter(torch.zeros(k))
        self.trans = nn.Parameter(torch.zeros(k, k))
        self.end = nn.Parameter(torch.zeros(k))
        self.register_buffer("start_ok", start_ok, persistent=False)
        self.register_buffer("trans_ok", trans_ok, persistent=False)
        self.register_buffer("end_ok", end_ok, persistent=False)

    def scores(self, forbidden: float = FORBIDDEN) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Start, transition and end scores with the forbidden entries set to `forbidden`."""
        return (self.start.masked_fill(~self.start_ok, forbidden), self.trans.masked_fill(~self.trans_ok, forbidden),
                self.end.masked_fill(~self.end_ok, forbidden))

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood (nats) of each gold path: emissions ``(B, T, K)``, tags ``(B, T)`` int (any
        value past a sequence's length), lengths ``(B,)`` >= 1. Returns ``(B,)``."""
        emissions = emissions.float()
        start, trans, end = self.scores()
        real = torch.arange(emissions.shape[1], device=emissions.device)[None, :] < lengths[:, None]  # (B, T)
        tags = tags.clamp(min=0) * real  # padded positions point at tag 0; they are masked below
        gold = start[tags[:, 0]] + (emissions.gather(2, tags[:, :, None]).squeeze(2) * real).sum(1)
        gold = gold + (trans[tags[:, :-1], tags[:, 1:]] * real[:, 1:]).sum(1)
        gold = gold + end[tags.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)]
        return self.log_partition(emissions, lengths) - gold

    def log_partition(self, emissions: torch.Tensor, lengths: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """log Z of each sequence, the log-sum-exp of the scores of all its tag paths (nats): emissions
        ``(B, T, K)``, lengths ``(B,)`` >= 1. At a `temperature` other than 1 every score (emissions, start,
        transitions, end) is divided by it first. Returns ``(B,)`` float32."""
        emissions = emissions.float() / temperature
        start, trans, end = (s / temperature for s in self.scores())
        real = torch.arange(emissions.shape[1], device=emissions.device)[None, :] < lengths[:, None]  # (B, T)
        # Forward algorithm in probability space, so each step is one (B, K) x (K, K) matmul instead of a
        # (B, K, K) log-sum-exp: alpha[j] <- log sum_i exp(alpha[i] + trans[i, j]) = shift + log(exp(alpha -
        # shift) @ exp(trans)), shifting by the row maximum (and trans by its maximum) to stay in range. An
        # underflow to 0 is clamped to the smallest float, so an unreachable tag scores about -87, not -inf
        # (whose gradient would be NaN), a difference of e^-87 in the partition function.
        trans_max = trans.max()
        trans_exp = (trans - trans_max).exp()
        tiny = torch.finfo(emissions.dtype).tiny
        alpha = start + emissions[:, 0]  # (B, K): log-sum of the scores of all paths ending in each tag
        for t in range(1, emissions.shape[1]):
            shift = alpha.max(dim=1, keepdim=True).values
            step = ((alpha - shift).exp() @ trans_exp).clamp(min=tiny).log() + shift + trans_max + emissions[:, t]
            alpha = torch.where(real[:, t, None], step, alpha)
        return torch.logsumexp(alpha + end, dim=1)

    def marginals(self, emissions: torch.Tensor, lengths: torch.Tensor, *, temperature: float = 1.0,
                  differentiable: bool = False) -> torch.Tensor:
        """The posterior probability of each tag at each position, summed over all paths (with the scores divided
        by `temperature`, as in `log_partition`): ``(B, T, K)`` float32, rows summing to 1 at real positions, 0
        past a sequence's length.

        These are the forward-backward marginals, obtained as the gradient of log Z with respect to the emissions
        (d log Z / d e[t, k] = P(y_t = k); Eisner 2016, "Inside-outside and forward-backward algorithms are just
        backprop"): the backward pass of the forward algorithm is the backward algorithm. `differentiable`
        keeps the graph, so that a loss on the marginals trains the emissions and the transitions (a second
        backward pass through the forward algorithm). Not under `torch.inference_mode` (it needs autograd)."""
        with torch.enable_grad():  # the marginals are a gradient, also when the caller is under no_grad
            leaf = emissions.float() if differentiable else emissions.detach().float().requires_grad_(True)
            log_z = self.log_partition(leaf, lengths, temperature)
            (grad,) = torch.autograd.grad(log_z.sum(), leaf, create_graph=differentiable)
        return grad * temperature  # d log Z / d e = P / T: the emissions enter log Z divided by T

    def decode(self, emissions: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        """Best valid path of each sequence (see `viterbi`)."""
        return viterbi(emissions, lengths, *self.scores(float("-inf")))
