"""The one training loop, shared by `pretrain.py` and `finetune.py`.

What differs between a character LM, a masked LM and a tagger is the *objective*: how it draws a batch, how it
turns a batch into a loss, and how it evaluates. Everything else lives here once: AdamW with weight decay on
matrices only, linear warmup then cosine (or linear) decay (as in nanoGPT / GPT-3), gradient accumulation and
clipping, bf16 autocast on CUDA, periodic evaluation with best-checkpoint keeping and early stopping, a tqdm
progress bar with loss, lr and chars/s, ``metrics.jsonl`` and a curve PNG, and exact resumption: the optimizer
moments, every RNG and the data sampler's generator are checkpointed, so a resumed run draws the same batches
and continues the same loss curve.

`fit` reads top to bottom as the loop it runs: restore (`_restore`) when resuming; then per step
`_train_step`; and every ``eval_interval`` steps `_evaluate`, `_save_best` when it improved, `_save_last`, and
the early-stopping check. What changes from step to step is a `LoopState`; what a run writes is the caller's
(a `Checkpointer`); the two extension points are the `Objective` (e.g. wrapped to add a penalty to its loss)
and `after_step`.

Output directory layout: ``last/`` (for ``--resume``), ``best/`` (best evaluation so far), ``metrics.jsonl``,
``curves.png``, and with ``--tensorboard`` ``tensorboard/`` (`charformer.runlog`).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from tqdm import tqdm

from .checkpoint import load_trainer_state, load_weights
from .cli import option
from .distributed import (DistInfo, barrier, full_tensor, full_weights, gradient_sync, mean_across_ranks, shard,
                          shard_like, wrap_model)
from .errors import CharformerError
from .runlog import RunLog


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping settings (model shape lives in `ModelConfig`)."""

    max_steps: int = option(2000, "optimizer steps to train for")
    batch_size: int = option(12, "sequences (or sentences, texts) per micro-batch on each rank")
    grad_accum: int = option(1, "micro-batches whose gradients are summed into one optimizer step")
    lr: float = option(1e-3, "peak learning rate, reached at the end of the warmup")
    min_lr: float = option(1e-4, "learning rate at the end of the decay")
    warmup_steps: int = option(100, "optimizer steps of linear warmup from lr / warmup_steps to lr")
    decay: str = option("cosine", "learning-rate decay after the warmup: cosine, linear or constant")
    weight_decay: float = option(0.1, "AdamW weight decay, on 2-D weights only (not on norms or biases)")
    beta1: float = option(0.9, "AdamW's decay rate of the first moment")
    beta2: float = option(0.99, "AdamW's decay rate of the second moment")
    grad_clip: float = option(1.0, "largest global gradient norm; larger gradients are scaled down (0: no clipping)")
    eval_interval: int = option(250, "optimizer steps between evaluations (and checkpoints)")
    log_interval: int = option(10, "optimizer steps between metrics.jsonl records")
    patience: int | None = option(None, "stop after this many evaluations without improvement (None: never)")
    max_bad_steps: int = option(20, "steps with a non-finite loss tolerated (each skipped) before the run stops")
    seed: int = option(1337, "seed of every random draw: initial weights, batches, dropout")
    device: str = option("auto", "auto (cuda if available, else cpu), cpu or cuda")
    compile: bool = option(False, "torch.compile the model (slower start, faster steps on a GPU)")
    fsdp: bool = option(False, "under torchrun: shard parameters, gradients and optimizer state across ranks "
                        "(charformer.distributed) instead of replicating them (DDP)")
    tensorboard: bool = option(False, "also write TensorBoard event files to OUT/tensorboard (needs the "
                               "tensorboard package: pip install charformer[tensorboard])")


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


@dataclass
class LoopState:
    """What the loop carries from step to step; saved as ``trainer_state["loop"]`` in every ``last/``."""

    step: int = 0  # optimizer steps taken (or skipped as non-finite)
    chars_seen: int = 0  # training characters read, over all ranks
    train_seconds: float = 0.0  # time in training steps
    wall_seconds: float = 0.0  # time in steps and evaluations
    best: float | None = None  # best value of the objective's metric so far
    bad_steps: int = 0  # steps skipped for a non-finite loss or gradient
    evals_since_best: int = 0


class Checkpointer(Protocol):
    """How a run writes its checkpoints; `fit` decides when. `weights` is the model's whole state dict when the
    model is sharded (FSDP), to be written instead of the model's own tensors; else None."""

    def save_last(self, path: Path, trainer_state: dict, trainer_tensors: dict, weights: dict | None) -> None:
        """A checkpoint to resume from: the model, and what `trainer_state` and `trainer_tensors` hold."""

    def save_best(self, path: Path, weights: dict | None) -> None:
        """The model as it is now, the best so far."""


class NoCheckpoints:
    """A `Checkpointer` that writes nothing (for timing the loop alone, `bench/step_time.py`)."""

    def save_last(self, path, trainer_state, trainer_tensors, weights) -> None:
        pass

    def save_best(self, path, weights) -> None:
        pass


@dataclass
class _Run:
    """The fixed parts of one `fit` call, shared by its phases."""

    model: torch.nn.Module  # the model itself (evaluation, checkpoints)
    wrapped: torch.nn.Module  # what trains: `model`, or its DDP wrapper
    run_model: torch.nn.Module  # `wrapped`, compiled if asked
    objective: Objective
    cfg: TrainConfig
    opt: torch.optim.Optimizer
    data_gen: torch.Generator
    checkpoints: Checkpointer
    out_dir: Path
    dist_info: DistInfo
    after_step: Callable[[int], None] | None
    log: RunLog | None  # rank 0's; None on other ranks

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()


def _restore(run: _Run, path: Path) -> LoopState:
    """Continue from the checkpoint at `path`: optimizer moments, every RNG, the loop's counters (the weights
    were loaded before the model was wrapped)."""
    saved, tensors = load_trainer_state(path)
    _restore_optimizer(run.opt, saved["optimizer"], tensors)
    torch.set_rng_state(tensors["rng.torch"])
    run.data_gen.set_state(tensors["rng.data"])
    if run.device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return LoopState(**saved["loop"])


def _train_step(run: _Run, state: LoopState) -> tuple[dict, int]:
    """One optimizer step over `grad_accum` micro-batches (skipped if the loss or gradients are not finite).
    Returns its metrics.jsonl record (step, train_loss in nats, lr) and the characters it read, all ranks'."""
    cfg, info = run.cfg, run.dist_info
    lr = lr_at(state.step, cfg)
    for group in run.opt.param_groups:
        group["lr"] = lr * group["lr_scale"]
    total_loss, chars = 0.0, 0
    for micro in range(cfg.grad_accum):
        batch = [t.to(run.device, non_blocking=True) for t in shard(list(run.objective.batch(run.data_gen)), info)]
        # Across ranks, reduce gradients only once per optimizer step, after the last micro-batch.
        with gradient_sync(run.wrapped, sync=micro == cfg.grad_accum - 1):
            with run.autocast():
                loss, n_chars = run.objective.loss(run.run_model, batch)
            (loss / cfg.grad_accum).backward()
        total_loss += loss.item() / cfg.grad_accum
        chars += n_chars * info.world_size
    total_loss = mean_across_ranks(total_loss, info, run.device)
    grads_ok = math.isfinite(total_loss)
    if grads_ok and cfg.grad_clip > 0:
        grads_ok = math.isfinite(torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip).item())
    if grads_ok:
        run.opt.step()
        if run.after_step is not None:
            run.after_step(state.step)
    else:
        state.bad_steps += 1
        if state.bad_steps > cfg.max_bad_steps:
            raise CharformerError(
                f"{state.bad_steps} steps with non-finite loss or gradients (last at step {state.step}); "
                f"stopping. The last good checkpoint is in {run.out_dir / 'last'}; try a lower lr"
            )
    run.opt.zero_grad(set_to_none=True)
    state.step += 1
    state.chars_seen += chars
    return {"step": state.step, "train_loss": total_loss, "lr": lr}, chars


def _evaluate(run: _Run, state: LoopState) -> tuple[dict, bool]:
    """Evaluate on every rank (the same weights and data, so early stopping agrees and FSDP's gathers match);
    rank 0 records it. Returns the metrics and whether they are the best so far."""
    run.model.eval()
    with torch.no_grad(), run.autocast():
        metrics = run.objective.evaluate(run.model)
        # The report (a sample) is rank 0's alone, except under FSDP, where generating gathers parameters.
        text = run.objective.report(run.model) if run.dist_info.is_main or run.cfg.fsdp else None
    run.model.train()
    value = metrics[run.objective.metric]
    improved = state.best is None or (value > state.best if run.objective.higher_is_better else value < state.best)
    if improved:
        state.best, state.evals_since_best = value, 0
    else:
        state.evals_since_best += 1
    if run.log is not None:
        run.log.write({"step": state.step, **{k if k.startswith(("val_", "dev_")) else f"val_{k}": v
                                             for k, v in metrics.items()}})
        run.log.plot()
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        tqdm.write(f"step {state.step}: {shown}" + (" (best)" if improved else ""))
        if text:
            tqdm.write(text)
    return metrics, improved


def _save_best(run: _Run) -> None:
    weights = full_weights(run.model)  # gathering FSDP shards takes every rank; writing, rank 0 alone
    if run.dist_info.is_main:
        run.checkpoints.save_best(run.out_dir / "best", weights)


def _save_last(run: _Run, state: LoopState) -> None:
    opt_json, tensors = _optimizer_tensors(run.opt)  # every rank: a collective under FSDP
    weights = full_weights(run.model)
    if run.dist_info.is_main:
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.data"] = run.data_gen.get_state()
        if run.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        trainer_state = {"loop": asdict(state), "optimizer": opt_json, "train_config": asdict(run.cfg),
                         "world_size": run.dist_info.world_size}
        run.checkpoints.save_last(run.out_dir / "last", trainer_state, tensors, weights)
    barrier(run.dist_info)  # no rank runs ahead of a checkpoint it may need to read


def _log_step(run: _Run, bar: tqdm, record: dict, chars_per_s: float) -> None:
    """Advance the progress bar; every `log_interval` steps (and at the last) show and record the step."""
    bar.update(1)
    step = record["step"]
    if step % run.cfg.log_interval == 0 or step == run.cfg.max_steps:
        bar.set_postfix(loss=f"{record['train_loss']:.4f}", lr=f"{record['lr']:.2e}", chars_s=f"{chars_per_s:,.0f}")
        if run.log is not None:
            run.log.write({**record, "chars_per_s": chars_per_s})


def _patience_ran_out(cfg: TrainConfig, state: LoopState) -> bool:
    """Early stopping: `cfg.patience` evaluations in a row without improvement (says so when it stops)."""
    if cfg.patience is not None and state.evals_since_best >= cfg.patience:
        tqdm.write(f"early stop: no improvement in {cfg.patience} evaluations")
        return True
    return False


def _summary(state: LoopState, metric: str, last_eval: dict, stopped_early: bool) -> dict:
    return {"steps": state.step, "chars_seen": state.chars_seen, "train_seconds": round(state.train_seconds, 3),
            "wall_seconds": round(state.wall_seconds, 2), f"best_{metric}": state.best,
            "skipped_steps": state.bad_steps, "stopped_early": stopped_early, "last_eval": last_eval}


def fit(model: torch.nn.Module, objective: Objective, cfg: TrainConfig, out_dir: str | Path, checkpoints: Checkpointer,
        *, resume: bool = False, lr_scale: dict[str, float] | None = None, desc: str = "train",
        dist_info: DistInfo = DistInfo(), after_step: Callable[[int], None] | None = None) -> dict:
    """Train `model` on `objective` for `cfg.max_steps` optimizer steps (or until early stopping).

    Evaluates every `eval_interval` steps and at the end (evaluation time counts in wall_seconds); writes
    ``out_dir/last`` at each evaluation (`Checkpointer.save_last`) and ``out_dir/best`` when the metric
    improves (`save_best`). With `resume`, continues from ``out_dir/last`` exactly. Under torchrun (`dist_info`
    from `charformer.distributed.init_distributed`), the objective must draw *global* batches (per-rank batch x
    world size): each rank trains on its slice, DDP (or FSDP, with `cfg.fsdp`) averages gradients, and only
    rank 0 writes logs and checkpoints. `after_step(step)` is called after each optimizer step that was taken
    (not skipped), with its 0-based index, while gradients are still present (AdaLoRA's importance scores need
    them). Returns a summary: steps, chars_seen, train_seconds (steps only), wall_seconds (evaluations
    included), best metric, last evaluation, skipped (non-finite) steps, whether it stopped early. Raises
    CharformerError after too many non-finite steps, or on Ctrl-C / SIGTERM (having saved ``last/``).
    """
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    if resume:
        load_weights(model, out_dir / "last")  # before FSDP shards the parameters
    wrapped = wrap_model(model, dist_info, fsdp=cfg.fsdp)
    run = _Run(model, wrapped, torch.compile(wrapped) if cfg.compile else wrapped, objective, cfg,
               make_optimizer(model, cfg, lr_scale), torch.Generator().manual_seed(cfg.seed), checkpoints, out_dir,
               dist_info, after_step, log=None)
    state = _restore(run, out_dir / "last") if resume else LoopState()
    if dist_info.is_main:
        run.log = RunLog(out_dir, title=desc, resume_step=state.step if resume else None, tensorboard=cfg.tensorboard)
    model.train()
    last_eval, stopped_early = {}, False
    bar = tqdm(total=cfg.max_steps, initial=state.step, desc=desc, dynamic_ncols=True, mininterval=1.0,
               disable=not dist_info.is_main)
    try:
        while state.step < cfg.max_steps and not stopped_early:
            t0 = time.perf_counter()  # one optimizer step and its record; evaluation excluded
            record, chars = _train_step(run, state)
            _log_step(run, bar, record, chars_per_s=chars / (time.perf_counter() - t0))
            step_seconds = time.perf_counter() - t0
            state.train_seconds, state.wall_seconds = state.train_seconds + step_seconds, state.wall_seconds + step_seconds
            if state.step % cfg.eval_interval == 0 or state.step == cfg.max_steps:
                t0 = time.perf_counter()  # evaluation (and the best checkpoint) counts in wall_seconds only
                last_eval, improved = _evaluate(run, state)
                if improved:
                    _save_best(run)
                state.wall_seconds += time.perf_counter() - t0
                _save_last(run, state)
                stopped_early = _patience_ran_out(cfg, state)
    except KeyboardInterrupt:
        bar.close()
        _save_last(run, state)
        raise CharformerError(f"interrupted at step {state.step}; saved {out_dir / 'last'}: continue with --resume") from None
    finally:
        if run.log is not None:
            run.log.close()
    bar.close()
    return _summary(state, objective.metric, last_eval, stopped_early)
