"""A character-level transformer: pre-norm blocks, rotary positions, tied input/output embeddings.

The architecture is the GPT-2 / nanoGPT decoder (Radford et al. 2019) with three modern changes found in
LLaMA-style models: rotary position embeddings (RoPE, Su et al. 2021) instead of learned positions, RMSNorm
(Zhang & Sennrich 2019) as the default normalisation, and no biases. ``causal=True`` gives a language model
for generation; ``causal=False`` gives a bidirectional encoder (BERT-style, Devlin et al. 2019) for masked-LM
pretraining, tagging and classification. The vocabulary is characters (`charformer.vocab`), so the embedding
table is small and the sequences are long: attention cost is what the kernels in `kernels/` are for, and what
two options cut: a sliding `window` (computed blockwise by ``attn_impl="local"``, `charformer.window_attention`)
and an hourglass (``shorten`` > 1: the middle layers run over groups of K characters, `charformer.hourglass`).

Shapes: B batch, T sequence length (characters), C = d_model, H = n_heads, D = C / H head dim, V vocab size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import ATTN_IMPLS, attention, decode_attention
from .hourglass import SHORTEN_POOLS, SHORTEN_UPSAMPLES, Hourglass, ShortenState


@dataclass
class ModelConfig:
    """Hyper-parameters of `CharTransformer`; saved as ``config.json`` beside every checkpoint."""

    vocab_size: int
    block_size: int = 256  # longest sequence (characters) the model is trained on
    n_layers: int = 6
    n_heads: int = 6
    d_model: int = 384
    d_ff: int | None = None  # MLP hidden size; None means 4 * d_model
    dropout: float = 0.0
    causal: bool = True
    attn_impl: str = "sdpa"  # one of charformer.attention.ATTN_IMPLS
    norm: str = "rmsnorm"  # "rmsnorm" or "layernorm"
    rope_base: float = 10000.0
    window: int | None = None  # sliding-window attention span (characters), None for full attention
    # Hourglass (charformer.hourglass): the middle layers run over ceil(T / shorten) positions. shorten_layers is
    # [pre, mid, post], summing to n_layers; empty means no split (the plain model; needs shorten = 1).
    shorten: int = 1
    shorten_layers: list[int] = field(default_factory=list)
    shorten_pool: str = "mean"  # "mean", "linear" or "gbst" (bidirectional only)
    shorten_upsample: str = "repeat"  # "repeat" or "linear"
    gbst_blocks: int = 4  # gbst: candidate block sizes 1..gbst_blocks
    # Attention heads of each layer after head pruning (charformer.prune), each 1..n_heads, of head dim
    # d_model / n_heads; empty means n_heads in every layer (and is not written to config.json).
    layer_heads: list[int] = field(default_factory=list)

    def __post_init__(self):
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head dim {self.d_model // self.n_heads} must be even for rotary embeddings")
        if self.norm not in ("rmsnorm", "layernorm"):
            raise ValueError(f"norm must be 'rmsnorm' or 'layernorm', got {self.norm!r}")
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}")
        self._check_shorten()
        if self.layer_heads and (len(self.layer_heads) != self.n_layers
                                 or not all(1 <= h <= self.n_heads for h in self.layer_heads)):
            raise ValueError(f"layer_heads must give each of the {self.n_layers} layers 1..{self.n_heads} heads, "
                             f"got {self.layer_heads}")
        if self.layer_heads == [self.n_heads] * self.n_layers:
            self.layer_heads = []

    def heads_of(self, layer: int) -> int:
        """Attention heads of layer `layer` (n_heads unless heads were pruned)."""
        return self.layer_heads[layer] if self.layer_heads else self.n_heads

    def _check_shorten(self):
        if self.shorten < 1:
            raise ValueError(f"shorten must be >= 1, got {self.shorten}")
        if self.shorten > 1 and not self.shorten_layers:
            raise ValueError(f"shorten={self.shorten} needs shorten_layers [pre, mid, post] (summing to n_layers)")
        if self.shorten_layers and (len(self.shorten_layers) != 3 or sum(self.shorten_layers) != self.n_layers
                                    or self.shorten_layers[1] < 1 or min(self.shorten_layers) < 0):
            raise ValueError(f"shorten_layers must be [pre, mid, post] with mid >= 1 summing to n_layers={self.n_layers}, "
                             f"got {self.shorten_layers}")
        if self.shorten_pool not in SHORTEN_POOLS:
            raise ValueError(f"shorten_pool must be one of {SHORTEN_POOLS}, got {self.shorten_pool!r}")
        if self.shorten_upsample not in SHORTEN_UPSAMPLES:
            raise ValueError(f"shorten_upsample must be one of {SHORTEN_UPSAMPLES}, got {self.shorten_upsample!r}")
        if self.shorten_pool == "gbst" and self.causal:
            raise ValueError("shorten_pool='gbst' looks ahead: it is for bidirectional models (causal=False)")
        if self.gbst_blocks < 1:
            raise ValueError(f"gbst_blocks must be >= 1, got {self.gbst_blocks}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        """The fields as a dict; layer_heads only when set, so that an unpruned model's config.json (and the
        fingerprint adapters keep of it) is what it was before head pruning existed."""
        d = asdict(self)
        if not d["layer_heads"]:
            del d["layer_heads"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Rebuild from `to_dict` output; raises ValueError on unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)

    @property
    def mid_window(self) -> int | None:
        """The attention window of the shortened layers, in groups: ceil(window / shorten)."""
        return None if self.window is None else -(-self.window // self.shorten)


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dim (Zhang & Sennrich 2019): LayerNorm without the mean shift."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32: the mean of squares of bf16 activations loses too much precision.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


def make_norm(cfg: ModelConfig) -> nn.Module:
    return RMSNorm(cfg.d_model) if cfg.norm == "rmsnorm" else nn.LayerNorm(cfg.d_model, bias=False)


def rope_tables(head_dim: int, n_pos: int, base: float, device=None) -> torch.Tensor:
    """Rotations for rotary embeddings as unit complex numbers ``(n_pos, head_dim/2)`` complex64: channel pair i
    at position ``pos`` turns by the angle ``pos * base^(-2i/head_dim)`` (Su et al. 2021, RoFormer)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(n_pos, device=device, dtype=torch.float32), inv_freq)
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive channel pairs of x ``(B, H, T, D)`` by rotations ``(T, D/2)`` (from `rope_tables`).

    Reading each pair as a complex number turns the 2x2 rotation into one complex multiply (about 3x faster on
    a CPU than writing out cos/sin terms). A query at position m and a key at position n then score
    ``q R(m)·R(n)^T k = q R(m - n) k``: attention sees only relative offsets, which is why cached decoding can
    reuse keys computed earlier.
    """
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, H, T, D/2) complex
    return torch.view_as_real(pairs * rotations).flatten(-2).to(x.dtype)


def _slots(k: torch.Tensor, max_len: int) -> torch.Tensor:
    """Zeros ``(B, H, max_len, D)`` for the keys or values of a layer whose new ones are k ``(B, H, t, D)``:
    allocated at a layer's first step, so a cache needs to know neither the layer's head count (which head
    pruning makes differ between layers) nor the head dim."""
    return k.new_zeros(k.shape[0], k.shape[1], max_len, k.shape[3])


class KVCache:
    """Keys and values of the tokens decoded so far, per layer, preallocated to ``max_len`` positions.

    k/v per layer: ``(B, H, max_len, D)`` (H: that layer's heads), allocated at the layer's first step, in the
    new keys' batch size, device and dtype; `length` is how many positions are filled (the same for every
    sequence in the batch).
    """

    def __init__(self, n_layers: int, max_len: int):
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers
        self.max_len = max_len
        self.length = 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new k/v ``(B, H, t, D)`` after the filled part; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot append up to {end}")
        if self.k[layer] is None:
            self.k[layer], self.v[layer] = _slots(k, self.max_len), _slots(v, self.max_len)
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class RaggedKVCache:
    """Keys and values of a batch of sequences of different lengths, for continuous batching
    (`charformer.batch_decode`): row b holds ``lengths[b]`` positions, ``(B,)`` int64; k/v per layer
    ``(B, H, max_len, D)``. A step either prefills empty rows (right-padded, with their real lengths given) or
    adds one position to every row, each at its own position; rows leave (`keep`) and join (`extend`) between
    steps. Plain (non-hourglass) models only. Layers are allocated at their first step, as in `KVCache`."""

    def __init__(self, n_layers: int, batch_size: int, max_len: int, device):
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.max_len = max_len
        self.end = 0  # key slots the current step reads: the longest row after it

    def positions(self, t: int) -> torch.Tensor:
        """Start a step of `t` new positions per row; returns their positions ``(B, t)`` int64. Raises ValueError
        for several positions on a row that is not empty, or for a row that would pass max_len."""
        if t > 1 and bool(self.lengths.any()):
            raise ValueError("a step of several positions needs empty rows (a prefill)")
        self.end = (int(self.lengths.max()) if len(self.lengths) else 0) + t
        if self.end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot append up to {self.end}")
        return self.lengths[:, None] + torch.arange(t, device=self.lengths.device)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new k/v ``(B, H, t, D)`` at each row's positions; return the keys/values ``(B, H, end, D)``
        (a row's slots past its length hold stale values that its key length masks)."""
        if self.k[layer] is None:
            self.k[layer], self.v[layer] = _slots(k, self.max_len), _slots(v, self.max_len)
        if k.shape[2] == 1:
            rows = torch.arange(k.shape[0], device=k.device)
            self.k[layer][rows, :, self.lengths] = k[:, :, 0]
            self.v[layer][rows, :, self.lengths] = v[:, :, 0]
        else:
            self.k[layer][:, :, : k.shape[2]] = k
            self.v[layer][:, :, : k.shape[2]] = v
        return self.k[layer][:, :, : self.end], self.v[layer][:, :, : self.end]

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows`, in that order (the others' sequences left the batch)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.lengths.device)
        self.k = [None if k is None else k.index_select(0, index) for k in self.k]
        self.v = [None if v is None else v.index_select(0, index) for v in self.v]
        self.lengths = self.lengths.index_select(0, index)

    def extend(self, other: "RaggedKVCache") -> None:
        """Append the rows of `other` (same model and max_len, every layer filled) after these."""
        if not len(self.lengths):  # nothing of ours to keep (perhaps not even allocated)
            self.k, self.v, self.lengths = list(other.k), list(other.v), other.lengths
            return
        self.k = [torch.cat(pair) for pair in zip(self.k, other.k)]
        self.v = [torch.cat(pair) for pair in zip(self.v, other.v)]
        self.lengths = torch.cat([self.lengths, other.lengths])


class HourglassCache:
    """The decoding state of an hourglass model: `full`, a `KVCache` of the pre and post layers (max_len
    positions); `short`, one of the middle layers (ceil(max_len / K) groups); `state`, the `ShortenState`.
    `length` is the number of characters decoded, as for `KVCache`."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device, dtype):
        pre, mid, post = cfg.shorten_layers
        self.full = KVCache(pre + post, max_len)
        self.short = KVCache(mid, -(-max_len // cfg.shorten))
        self.state = ShortenState(batch_size, cfg.shorten, cfg.d_model, device, dtype)
        self.max_len = max_len

    @property
    def length(self) -> int:
        return self.full.length

    @length.setter
    def length(self, value: int) -> None:
        self.full.length = value


class SelfAttention(nn.Module):
    """Multi-head self-attention with RoPE over `n_heads` heads (default cfg.n_heads; fewer after head pruning)
    of head dim D = cfg.head_dim. Separate q/k/v/o projections ``(C, H*D)`` and ``(H*D, C)`` so each can be
    adapted (LoRA); for inference `fuse_qkv` stacks the first three into one ``(C, 3*H*D)`` layer, `qkv_proj`."""

    def __init__(self, cfg: ModelConfig, window: int | None = None, n_heads: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.window = window  # characters (or, in an hourglass's middle layers, groups)
        self.n_heads = cfg.n_heads if n_heads is None else n_heads
        inner = self.n_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, inner, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, inner, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, inner, bias=False)
        self.qkv_proj: nn.Module | None = None
        self.o_proj = nn.Linear(inner, cfg.d_model, bias=False)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        # Optional learned keys/values put in front of this layer's k/v (prefix tuning, charformer.peft.prefix):
        # a module mapping (k, v, lengths) to (k', v', lengths'). None for the plain model.
        self.kv_prefix: nn.Module | None = None

    def forward(self, x, rotations, *, lengths=None, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        H, D = self.n_heads, self.cfg.head_dim
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)  # each (B, H, T, D)
        else:
            q, k, v = (proj(x).view(B, T, H, D).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))
        q, k = apply_rope(q, rotations), apply_rope(k, rotations)  # (B, H, T, D)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, H, cache.length + T, D)
        if self.kv_prefix is not None:
            # After the cache, so the cache holds only real positions; queries stay aligned to the end of the keys.
            k, v, lengths = self.kv_prefix(k, v, lengths)  # (B, H, P + Tk, D), lengths + P
        if isinstance(cache, RaggedKVCache) and T == 1:
            # Rows of different lengths: each query sits at its own row's last key, not at the end of the keys.
            y = decode_attention(q, k, v, key_lengths=lengths, window=self.window)
        else:
            y = attention(q, k, v, causal=self.cfg.causal, key_lengths=lengths, window=self.window,
                          impl=self.cfg.attn_impl)
        y = y.transpose(1, 2).reshape(B, T, H * D)
        return self.resid_dropout(self.o_proj(y))

    def fuse_qkv(self) -> bool:
        """Replace q/k/v_proj by one ``(C, 3C)`` layer computing the same products (for inference: one matmul
        instead of three, and under int8 one quantization of x instead of three; `charformer.quantize`). Layers
        wrapped by a parameter-efficient method are left as they are. Returns whether it fused."""
        if self.qkv_proj is not None:
            return False
        projs = (self.q_proj, self.k_proj, self.v_proj)
        if any(type(p) is not nn.Linear for p in projs):
            return False
        weight = torch.cat([p.weight.detach() for p in projs])  # (3HD, C): output rows q, then k, then v
        self.qkv_proj = nn.Linear(self.cfg.d_model, weight.shape[0], bias=False, device=weight.device,
                                  dtype=weight.dtype)
        self.qkv_proj.weight = nn.Parameter(weight, requires_grad=False)
        del self.q_proj, self.k_proj, self.v_proj
        return True


class MLP(nn.Module):
    """Position-wise feed-forward: ``Linear(C, d_ff) -> GELU -> Linear(d_ff, C)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.fc_out = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.fc_out(F.gelu(self.fc_in(x))))


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))`` (Xiong et al. 2020)."""

    def __init__(self, cfg: ModelConfig, window: int | None = None, n_heads: int | None = None):
        super().__init__()
        self.norm1, self.attn = make_norm(cfg), SelfAttention(cfg, window, n_heads)
        self.norm2, self.mlp = make_norm(cfg), MLP(cfg)

    def forward(self, x, rotations, *, lengths=None, cache=None, layer=0):
        x = x + self.attn(self.norm1(x), rotations, lengths=lengths, cache=cache, layer=layer)
        return x + self.mlp(self.norm2(x))


class CharTransformer(nn.Module):
    """The character transformer. ``forward(idx) -> logits``; `hidden_states` gives the final features.

    idx: ``(B, T)`` int64 character ids, T <= block_size (longer inputs raise ValueError).
    lengths: optional ``(B,)`` int, the real length of each right-padded sequence; padded positions neither
        attend nor are attended to, so real positions get exactly what each sequence alone would get.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        pre, mid, _ = cfg.shorten_layers or (cfg.n_layers, 0, 0)
        self.blocks = nn.ModuleList(
            Block(cfg, cfg.mid_window if pre <= i < pre + mid else cfg.window, cfg.heads_of(i))
            for i in range(cfg.n_layers)
        )
        self.hourglass = Hourglass(cfg) if cfg.shorten_layers else None
        self.norm_f = make_norm(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying (Press & Wolf 2017)
        # Stored as real (block_size, D/2, 2) fp32 pairs: a complex buffer would be silently made real by .half().
        self.register_buffer("rope", self._rope_pairs(), persistent=False)
        self.apply(self._init_weights)
        # GPT-2 scales the projections that write into the residual stream by 1/sqrt(2 * n_layers), so the
        # residual's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "fc_out.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))
        if self.hourglass is not None:
            self.hourglass.reset_parameters()

    def _rope_pairs(self) -> torch.Tensor:
        return torch.view_as_real(rope_tables(self.cfg.head_dim, self.cfg.block_size, self.cfg.rope_base))

    def _rotations(self, start: int, length: int) -> torch.Tensor:
        """RoPE rotations ``(length, D/2)`` complex64 for positions start..start+length-1."""
        return torch.view_as_complex(self._rope_fp32()[start : start + length])

    def _row_rotations(self, positions: torch.Tensor) -> torch.Tensor:
        """RoPE rotations ``(B, 1, T, D/2)`` complex64 for per-row positions ``(B, T)`` (ragged batches)."""
        return torch.view_as_complex(self._rope_fp32()[positions])[:, None]

    def _rope_fp32(self) -> torch.Tensor:
        if self.rope.dtype != torch.float32:  # the model was cast to fp16/bf16: angles need fp32, rebuild them
            self.rope = self._rope_pairs().to(self.rope.device)
        return self.rope

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def new_cache(self, batch_size: int, max_len: int, *,
                  ragged: bool = False) -> KVCache | HourglassCache | RaggedKVCache:
        """An empty decoding cache for `batch_size` sequences of up to `max_len` characters; `ragged`, one whose
        rows may differ in length (`RaggedKVCache`; raises ValueError for an hourglass model)."""
        weight = self.tok_emb.weight
        if self.hourglass is not None:
            if ragged:
                raise ValueError("an hourglass model keeps one decoding state per batch: no ragged cache")
            return HourglassCache(self.cfg, batch_size, max_len, weight.device, weight.dtype)
        if ragged:
            return RaggedKVCache(self.cfg.n_layers, batch_size, max_len, weight.device)
        return KVCache(self.cfg.n_layers, max_len)

    def hidden_states(self, idx, *, lengths=None, cache: KVCache | HourglassCache | RaggedKVCache | None = None,
                      first: torch.Tensor | None = None) -> torch.Tensor:
        """Final-normed features ``(B, T, C)``. With a `cache` (from `new_cache`), idx holds only the new
        positions; with a `RaggedKVCache`, `lengths` (a prefill's right-padded prompt lengths) or 1 (a decoding
        step) new positions per row. `first` ``(B, C)``, if given, stands in for the embedding of position 0: a
        vector that no character id has, such as a criterion marker (`charformer.tasks.criteria`)."""
        B, T = idx.shape
        if isinstance(cache, RaggedKVCache):
            return self._ragged_step(idx, lengths, cache)
        start = cache.length if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start + T} characters exceeds block_size={self.cfg.block_size}")
        x = self.tok_emb(idx)  # (B, T, C)
        if first is not None:
            x = torch.cat([first[:, None].to(x.dtype), x[:, 1:]], 1)
        x = self.drop(x)
        if self.hourglass is None:
            x = self._run_blocks(self.blocks, x, start, lengths, cache)
        else:
            x = self._hourglass(x, start, lengths, cache)
        if cache is not None:
            cache.length += T
        return self.norm_f(x)

    def _ragged_step(self, idx, lengths, cache: RaggedKVCache) -> torch.Tensor:
        """`hidden_states` over rows at their own positions: row b's new positions follow its cached ones."""
        positions = cache.positions(idx.shape[1])  # (B, T)
        if cache.end > self.cfg.block_size:
            raise ValueError(f"sequence of {cache.end} characters exceeds block_size={self.cfg.block_size}")
        key_lengths = cache.lengths + (idx.shape[1] if lengths is None else lengths.to(cache.lengths.device))
        x = self.drop(self.tok_emb(idx))  # (B, T, C)
        rotations = self._row_rotations(positions)  # (B, 1, T, D/2) complex
        for i, block in enumerate(self.blocks):
            x = block(x, rotations, lengths=key_lengths, cache=cache, layer=i)
        cache.lengths = key_lengths
        return self.norm_f(x)

    def _run_blocks(self, blocks, x, start: int, lengths, cache: KVCache | None, first_layer: int = 0):
        """Run x ``(B, T, C)`` at positions start.. through `blocks`, which use cache layers first_layer.."""
        rotations = self._rotations(start, x.shape[1])  # (T, D/2) complex
        for i, block in enumerate(blocks):
            x = block(x, rotations, lengths=lengths, cache=cache, layer=first_layer + i)
        return x

    def _hourglass(self, x, start: int, lengths, cache: HourglassCache | None):
        """Pre layers at full resolution, middle layers over groups of K, post layers (`charformer.hourglass`)."""
        pre, mid, _ = self.cfg.shorten_layers
        full, short, state = (cache.full, cache.short, cache.state) if cache is not None else (None, None, None)
        x = self._run_blocks(self.blocks[:pre], x, start, lengths, full)
        z, z_lengths = self.hourglass.shorten(x, lengths, state)  # (B, n, C)
        delta = z.new_zeros(z.shape)
        if z.shape[1]:  # a decoding step inside a group completes none
            g0 = short.length if short is not None else 0
            delta = self._run_blocks(self.blocks[pre : pre + mid], z, g0, z_lengths, short) - z
            if short is not None:
                short.length += z.shape[1]
        x = x + self.hourglass.lengthen(delta, start, x.shape[1], state)
        return self._run_blocks(self.blocks[pre + mid :], x, start, lengths, full, first_layer=pre)

    def forward(self, idx, *, lengths=None, cache: KVCache | None = None,
                select: torch.Tensor | None = None) -> torch.Tensor:
        """Next-character (causal) or masked-character (bidirectional) logits ``(B, T, V)``.

        `select`, a ``(B, T)`` bool mask, returns only the logits of the selected positions, ``(N, V)`` in
        row-major order: masked LM scores ~15% of the positions, and the V-wide head is the costliest matmul of
        a small character model, so skipping the rest saves about a third of a pretraining step.
        """
        hidden = self.hidden_states(idx, lengths=lengths, cache=cache)
        return self.lm_head(hidden if select is None else hidden[select])

    def num_params(self) -> int:
        """Number of parameters (the tied embedding / LM head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Forward-pass FLOPs per token at context length `seq_len` (default block_size).

        2 FLOPs per multiply-add: ``2 * N_matmul`` for the weight matmuls (all parameters except the norms;
        the embedding lookup is free but the tied LM head is a real V x C matmul, so it counts once) plus
        ``4 * T * H * D`` per layer (``4 * n_layers * T * d_model`` unless heads were pruned) for q·k and p·v
        over T keys (full T, as PaLM counts it, Chowdhery et al. 2022, appendix B). A training step costs about
        3x this (backward = 2x forward). In an hourglass the middle layers, and the shortening maps, run once per
        K characters, so their share is divided by K.
        """
        t = seq_len or self.cfg.block_size
        k = self.cfg.shorten
        pre, mid, _ = self.cfg.shorten_layers or (self.cfg.n_layers, 0, 0)
        flops = 0.0
        for i, block in enumerate(self.blocks):
            share = 1 / k if pre <= i < pre + mid else 1.0
            n_matmul = sum(p.numel() for p in block.parameters() if p.dim() == 2)
            flops += share * (2 * n_matmul + 4 * (t * share) * block.attn.n_heads * self.cfg.head_dim)
        for name, p in self.named_parameters():
            if p.dim() == 2 and not name.startswith("blocks."):
                flops += 2 * p.numel() / (k if name.startswith("hourglass.") else 1)
        return flops
