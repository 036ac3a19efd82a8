"""The one training loop, shared by `pretrain.py` and `finetune.py`.

What differs between a character LM, a masked LM and a tagger is the *objective*: how it draws a batch, how it
turns a batch into a loss, and how it evaluates. Everything else lives here once: AdamW with weight decay on
matrices only, linear warmup then cosine (or linear) decay (as in nanoGPT / GPT-3), gradient accumulation and
clipping, bf16 autocast on CUDA, periodic evaluation with best-checkpoint keeping and early stopping, a tqdm
progress bar with loss, lr and chars/s, ``metrics.jsonl`` and a curve PNG, and exact resumption: the optimizer
moments, every RNG and the data sampler's generator are checkpointed, so a resumed run draws the same batches
and continues the same loss curve.

Output directory layout: ``last/`` (for ``--resume``), ``best/`` (best evaluation so far), ``metrics.jsonl``,
``curves.png``.
"""

from __future__ import annotations

import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from tqdm import tqdm

from .checkpoint import load_trainer_state, load_weights
from .distributed import (DistInfo, barrier, full_tensor, full_weights, gradient_sync, mean_across_ranks, shard,
                          shard_like, wrap_model)
from .errors import CharformerError
from .runlog import MetricsLog, plot_curves


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings (model shape lives in `ModelConfig`)."""

    max_steps: int = 2000  # optimizer steps
    batch_size: int = 12  # sequences per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-4  # floor of the decay
    warmup_steps: int = 100
    decay: str = "cosine"  # "cosine", "linear" or "constant" after warmup
    weight_decay: float = 0.1  # on 2-D weights only
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    eval_interval: int = 250  # steps between evaluations (and checkpoints)
    log_interval: int = 10  # steps between metrics.jsonl records
    patience: int | None = None  # stop after this many evaluations without improvement
    max_bad_steps: int = 20  # non-finite losses tolerated (each skipped) before stopping
    seed: int = 1337
    device: str = "auto"  # "auto", "cpu" or "cuda"
    compile: bool = False  # torch.compile the model
    fsdp: bool = False  # under torchrun: shard parameters, gradients and optimizer state (charformer.distributed)


class Objective(Protocol):
    """What a task supplies to `fit`. `metric` names the evaluation key that selects the best checkpoint."""

    metric: str
    higher_is_better: bool

    def batch(self, generator: torch.Generator) -> tuple:
        """One training micro-batch of CPU tensors, drawn with `generator` only."""

    def loss(self, model: torch.nn.Module, batch: tuple) -> tuple[torch.Tensor, int]:
        """Mean loss (scalar, nats) over the batch's scored characters, and how many characters it read."""

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Evaluation metrics (must include `metric`); called under no_grad in eval mode."""

    def report(self, model: torch.nn.Module) -> str | None:
        """Optional text shown after each evaluation (e.g. a generated sample)."""


RUN_FILES = ("last", "best", "last.old", "best.old", "metrics.jsonl", "curves.png", "results.json")


def clear_run(out_dir: str | Path) -> None:
    """Delete the artifacts of an earlier run in `out_dir` (only the files `fit` and the scripts write)."""
    for name in RUN_FILES:
        path = Path(out_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


# (directory, trainer_state, trainer_tensors, weights): `weights` is the model's whole state dict when the model
# is sharded (FSDP), to be written instead of the model's own tensors; else None.
SaveFn = Callable[[Path, dict | None, dict | None, dict | None], None]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate at optimizer step `step` (0-based): linear warmup to `lr`, then decay to `min_lr`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.decay == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.decay == "cosine" else 1 - progress
    return cfg.min_lr + shape * (cfg.lr - cfg.min_lr)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, lr_scale: dict[str, float] | None = None) -> torch.optim.AdamW:
    """AdamW over trainable parameters; weight decay on 2-D weights (matmuls, embeddings) but not on norms or
    biases. `lr_scale` maps a parameter-name prefix to a multiplier of the scheduled lr (e.g. a task head
    learning faster than the pretrained body); each group stores its multiplier as ``lr_scale``."""
    lr_scale = lr_scale or {}
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = next((s for prefix, s in lr_scale.items() if name.startswith(prefix)), 1.0)
        groups.setdefault((p.dim() >= 2, scale), []).append(p)
    if not groups:
        raise CharformerError("the model has no trainable parameters")
    param_groups = [
        {"params": ps, "weight_decay": cfg.weight_decay if decay else 0.0, "lr_scale": scale}
        for (decay, scale), ps in sorted(groups.items())
    ]
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict[str, torch.Tensor]]:
    """Split an optimizer state_dict into JSON (hyper-parameters) and named tensors (moments, step counts),
    whole even when FSDP shards them (then a collective: every rank must call it)."""
    sd = opt.state_dict()
    tensors = {f"optim.{pid}.{k}": full_tensor(v) for pid, st in sd["state"].items() for k, v in st.items()}
    return {"param_groups": sd["param_groups"]}, tensors


def _restore_optimizer(opt: torch.optim.Optimizer, state: dict, tensors: dict[str, torch.Tensor]) -> None:
    params = [p for group in opt.param_groups for p in group["params"]]  # index = the state dict's parameter id
    per_param: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            param = params[int(pid)]
            # moments have the parameter's shape (and its sharding); step counts are scalars
            per_param.setdefault(int(pid), {})[name] = shard_like(v, param) if v.shape == param.shape else v
    opt.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})


def fit(
    model: torch.nn.Module,
    objective: Objective,
    cfg: TrainConfig,
    out_dir: str | Path,
    save: SaveFn,
    *,
    resume: bool = False,
    lr_scale: dict[str, float] | None = None,
    desc: str = "train",
    dist_info: DistInfo = DistInfo(),
    after_step: Callable[[int], None] | None = None,
) -> dict:
    """Train `model` on `objective` for `cfg.max_steps` optimizer steps (or until early stopping).

    Evaluates every `eval_interval` steps and at the end (evaluation time counts in wall_seconds); writes
    ``out_dir/last`` at each evaluation and ``out_dir/best`` when the metric improves, both through `save`. With
    `resume`, continues from ``out_dir/last`` exactly. Under torchrun (`dist_info` from
    `charformer.distributed.init_distributed`), the objective must draw *global* batches (per-rank batch x world
    size): each rank trains on its slice, DDP (or FSDP, with `cfg.fsdp`) averages gradients, and only rank 0
    writes logs and checkpoints. `after_step(step)` is called after each optimizer step that was taken (not
    skipped), with its 0-based index, while gradients are still present (AdaLoRA's importance scores need them).
    Returns a summary: steps, chars_seen, train_seconds (steps only), wall_seconds (evaluations included), best
    metric, last evaluation, skipped (non-finite) steps, whether it stopped early.
    """
    out_dir = Path(out_dir)
    device = next(model.parameters()).device
    torch.manual_seed(cfg.seed)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    state = {"step": 0, "chars_seen": 0, "train_seconds": 0.0, "wall_seconds": 0.0, "best": None, "bad_steps": 0,
             "evals_since_best": 0}
    if resume:
        load_weights(model, out_dir / "last")  # before FSDP shards the parameters
    wrapped = wrap_model(model, dist_info, fsdp=cfg.fsdp)
    opt = make_optimizer(model, cfg, lr_scale)
    if resume:
        saved, tensors = load_trainer_state(out_dir / "last")
        _restore_optimizer(opt, saved["optimizer"], tensors)
        torch.set_rng_state(tensors["rng.torch"])
        data_gen.set_state(tensors["rng.data"])
        if device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        state = saved["loop"]
    main = dist_info.is_main
    log = MetricsLog(out_dir / "metrics.jsonl", resume_step=state["step"] if resume else None) if main else None
    run_model = torch.compile(wrapped) if cfg.compile else wrapped
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    better = (lambda a, b: a > b) if objective.higher_is_better else (lambda a, b: a < b)

    def checkpoint(name: str) -> None:
        # Gathering FSDP shards takes every rank; writing, rank 0 alone.
        opt_json, tensors = _optimizer_tensors(opt)
        weights = full_weights(model)
        if main:
            tensors["rng.torch"] = torch.get_rng_state()
            tensors["rng.data"] = data_gen.get_state()
            if device.type == "cuda":
                tensors["rng.cuda"] = torch.cuda.get_rng_state()
            trainer_state = {"loop": state, "optimizer": opt_json, "train_config": asdict(cfg),
                             "world_size": dist_info.world_size}
            save(out_dir / name, trainer_state, tensors, weights)
        barrier(dist_info)  # no rank runs ahead of a checkpoint it may need to read

    def write(record: dict) -> None:
        if main:
            log.write(record)

    def evaluate() -> dict:
        t_eval = time.perf_counter()
        model.eval()
        # Every rank evaluates the same weights on the same data (so early stopping agrees, and FSDP's gathers
        # are matched on every rank); rank 0 records it. The report (a sample) is rank 0's alone, except under
        # FSDP, where generating gathers parameters and so takes every rank.
        with torch.no_grad(), autocast:
            metrics = objective.evaluate(model)
            text = objective.report(model) if main or cfg.fsdp else None
        model.train()
        value = metrics[objective.metric]
        improved = state["best"] is None or better(value, state["best"])
        if improved:
            state["best"], state["evals_since_best"] = value, 0
            weights = full_weights(model)
            if main:
                save(out_dir / "best", None, None, weights)
        else:
            state["evals_since_best"] += 1
        if main:
            log.write({"step": state["step"], **{k if k.startswith(("val_", "dev_")) else f"val_{k}": v for k, v in metrics.items()}})
            plot_curves(log.records(), out_dir / "curves.png", title=desc)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            tqdm.write(f"step {state['step']}: {shown}" + (" (best)" if improved else ""))
            if text:
                tqdm.write(text)
        state["wall_seconds"] += time.perf_counter() - t_eval
        return metrics

    model.train()
    last_metrics: dict = {}
    stopped_early = False
    bar = tqdm(total=cfg.max_steps, initial=state["step"], desc=desc, dynamic_ncols=True, mininterval=1.0, disable=not main)
    try:
        while state["step"] < cfg.max_steps:
            t0 = time.perf_counter()
            lr = lr_at(state["step"], cfg)
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_scale"]
            total_loss, chars = 0.0, 0
            for micro in range(cfg.grad_accum):
                batch = [t.to(device, non_blocking=True) for t in shard(list(objective.batch(data_gen)), dist_info)]
                # Across ranks, reduce gradients only once per optimizer step, after the last micro-batch.
                with gradient_sync(wrapped, sync=micro == cfg.grad_accum - 1):
                    with autocast:
                        loss, n_chars = objective.loss(run_model, batch)
                    (loss / cfg.grad_accum).backward()
                total_loss += loss.item() / cfg.grad_accum
                chars += n_chars * dist_info.world_size
            total_loss = mean_across_ranks(total_loss, dist_info, device)
            grads_ok = math.isfinite(total_loss)
            if grads_ok and cfg.grad_clip > 0:
                grads_ok = math.isfinite(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item())
            if grads_ok:
                opt.step()
                if after_step is not None:
                    after_step(state["step"])
            else:
                state["bad_steps"] += 1
                if state["bad_steps"] > cfg.max_bad_steps:
                    raise CharformerError(
                        f"{state['bad_steps']} steps with non-finite loss or gradients (last at step {state['step']}); "
                        f"stopping. The last good checkpoint is in {out_dir / 'last'}; try a lower lr"
                    )
            opt.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            state["step"] += 1
            state["chars_seen"] += chars
            bar.update(1)
            if state["step"] % cfg.log_interval == 0 or state["step"] == cfg.max_steps:
                bar.set_postfix(loss=f"{total_loss:.4f}", lr=f"{lr:.2e}", chars_s=f"{chars / dt:,.0f}")
                write({"step": state["step"], "train_loss": total_loss, "lr": lr, "chars_per_s": chars / dt})
            step_seconds = time.perf_counter() - t0  # the step and its bookkeeping, evaluation excluded
            state["train_seconds"] += step_seconds
            state["wall_seconds"] += step_seconds
            if state["step"] % cfg.eval_interval == 0 or state["step"] == cfg.max_steps:
                last_metrics = evaluate()
                checkpoint("last")
                if cfg.patience is not None and state["evals_since_best"] >= cfg.patience:
                    tqdm.write(f"early stop: no improvement in {cfg.patience} evaluations")
                    stopped_early = True
                    break
    except KeyboardInterrupt:
        bar.close()
        checkpoint("last")
        raise CharformerError(f"interrupted at step {state['step']}; saved {out_dir / 'last'}: continue with --resume") from None
    bar.close()
    return {
        "steps": state["step"],
        "chars_seen": state["chars_seen"],
        "train_seconds": round(state["train_seconds"], 3),
        "wall_seconds": round(state["wall_seconds"], 2),
        f"best_{objective.metric}": state["best"],
        "skipped_steps": state["bad_steps"],
        "stopped_early": stopped_early,
        "last_eval": last_metrics,
    }
