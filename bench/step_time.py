"""Wall time per training step: charformer's `fit` loop against a plain nanoGPT-style loop of the same shape.

The bar for the foundation is that our training loop, with everything it does (RoPE, separate q/k/v projections,
RMSNorm, tied head, tqdm, metrics.jsonl, gradient clipping, lr schedule) costs no more per step than the
simplest loop one could write for the same shape: nanoGPT's GPT (learned positions, fused qkv projection,
LayerNorm, tied head) trained by a bare ``for`` loop with AdamW. Both see the same random windows of Tiny
Shakespeare. The two are timed in many short alternating rounds so machine noise hits both alike; we report
medians of the per-round times.

    python -m bench.step_time                       # the CPU shape of configs/shakespeare_char_cpu.toml
    python -m bench.step_time --threads 1 --out bench/results/step_time_cpu.json   # (or: charformer bench step_time)
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from charformer.data import encode_array, random_windows, read_text
from charformer.model import CharTransformer, ModelConfig
from charformer.objectives import lm_loss
from charformer.train import NoCheckpoints, TrainConfig, fit
from charformer.vocab import CharVocab


class PlainGPT(nn.Module):
    """A minimal GPT-2 in the nanoGPT manner: learned positions, one fused qkv matmul, LayerNorm, GELU MLP."""

    def __init__(self, vocab_size, block_size, n_layers, n_heads, d_model):
        super().__init__()
        self.n_heads = n_heads
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(block_size, d_model)
        self.layers = nn.ModuleList(
            nn.ModuleDict(dict(ln1=nn.LayerNorm(d_model), qkv=nn.Linear(d_model, 3 * d_model), proj=nn.Linear(d_model, d_model),
                               ln2=nn.LayerNorm(d_model), fc=nn.Linear(d_model, 4 * d_model), out=nn.Linear(4 * d_model, d_model)))
            for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, idx):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for L in self.layers:
            q, k, v = L["qkv"](L["ln1"](x)).split(x.shape[-1], dim=2)
            q, k, v = (t.view(B, T, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1)
            x = x + L["proj"](y)
            x = x + L["out"](F.gelu(L["fc"](L["ln2"](x))))
        return self.head(self.ln_f(x))


def plain_loop(tokens, vocab_size, args, steps) -> float:
    """Seconds per step of the bare loop (after its own warm-up)."""
    torch.manual_seed(0)
    model = PlainGPT(vocab_size, args.block_size, args.n_layers, args.n_heads, args.d_model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    gen = torch.Generator().manual_seed(0)
    t0 = None
    for step in range(steps + args.warmup):
        if step == args.warmup:
            t0 = time.perf_counter()
        x, y = random_windows(tokens, args.block_size, args.batch_size, gen)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
    return (time.perf_counter() - t0) / steps


class _TimedLM:
    """The pretraining objective with evaluation stubbed out: only training steps are timed."""

    metric, higher_is_better = "loss", False

    def __init__(self, tokens, args):
        self.tokens, self.args = tokens, args

    def batch(self, generator):
        return random_windows(self.tokens, self.args.block_size, self.args.batch_size, generator)

    def loss(self, model, batch):
        x, y = batch
        return lm_loss(model(x), y), x.numel()

    def evaluate(self, model):
        return {"loss": 0.0}

    def report(self, model):
        return None


def charformer_loop(tokens, vocab_size, args, steps) -> float:
    """Seconds per step of `charformer.train.fit`: batch, forward, backward, clipping, optimizer, progress bar and
    metrics.jsonl included; the final evaluation (stubbed here anyway) excluded."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab_size, block_size=args.block_size, n_layers=args.n_layers, n_heads=args.n_heads,
                      d_model=args.d_model, norm=args.norm)
    model = CharTransformer(cfg)
    with tempfile.TemporaryDirectory() as out:
        train_cfg = TrainConfig(max_steps=args.warmup, batch_size=args.batch_size, eval_interval=10**9, log_interval=10,
                                warmup_steps=args.warmup)
        fit(model, _TimedLM(tokens, args), train_cfg, Path(out) / "warm", NoCheckpoints(), desc="warm-up")
        train_cfg.max_steps = steps
        summary = fit(model, _TimedLM(tokens, args), train_cfg, Path(out) / "timed", NoCheckpoints(), desc="charformer")
    return summary["train_seconds"] / steps


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/shakespeare.txt")
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--norm", default="layernorm", help="charformer's norm (the CPU configs use layernorm)")
    p.add_argument("--steps", type=int, default=25, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    text = read_text(args.data)
    vocab = CharVocab.build([text])
    tokens = encode_array(vocab, text)
    ours, plain = [], []
    for r in range(args.rounds):
        ours.append(charformer_loop(tokens, len(vocab), args, args.steps))
        plain.append(plain_loop(tokens, len(vocab), args, args.steps))
        print(f"round {r + 1}: charformer {ours[-1] * 1e3:.1f} ms/step, plain nanoGPT-style {plain[-1] * 1e3:.1f} ms/step")
    result = {
        "shape": {k: getattr(args, k) for k in ("n_layers", "n_heads", "d_model", "block_size", "batch_size", "norm")},
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "charformer_ms_per_step_median": statistics.median(ours) * 1e3,
        "plain_ms_per_step_median": statistics.median(plain) * 1e3,
        "ratio_charformer_over_plain": statistics.median(ours) / statistics.median(plain),
        "charformer_ms_per_step": [round(t * 1e3, 2) for t in ours],
        "plain_ms_per_step": [round(t * 1e3, 2) for t in plain],
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
    }
    assert all(math.isfinite(v) for v in ours + plain)
    print(json.dumps({k: v for k, v in result.items() if "median" in k or "ratio" in k}, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
