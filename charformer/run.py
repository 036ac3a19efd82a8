"""A training run's set-up, shared by `pretrain.py` and `finetune.py`: the options every run has, the output
directory (an earlier run is continued with ``--resume``, replaced with ``--overwrite``, else refused), the
devices and processes (one, or one per device under torchrun: `charformer.distributed`), the call to
`charformer.train.fit`, and ``results.json``.

Only rank 0 prints (`charformer.distributed.quiet_unless_main`) and writes files; an earlier run is deleted
only once the new one's input has been read and checked, so a run with bad input leaves the old one as it was.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .cli import add_dataclass_options
from .device import pick_device
from .distributed import DistInfo, barrier, init_distributed, quiet_unless_main, shutdown
from .errors import CharformerError
from .model import ModelConfig
from .train import TrainConfig, fit

# `ModelConfig`'s fields as options (charformer.model keeps the dataclass plain; a field with its own
# metadata["help"] uses that instead).
MODEL_HELP = {
    "block_size": "longest sequence the model reads, in characters (the attention context)",
    "n_layers": "transformer blocks",
    "n_heads": "attention heads per block; the head width d_model / n_heads must be even (rotary positions)",
    "d_model": "width of the residual stream (embedding size)",
    "d_ff": "hidden width of each block's MLP (None: 4 x d_model)",
    "dropout": "dropout probability on attention weights and residual branches while training",
    "causal": "true: each character sees only those before it (a language model); false: the whole block "
              "(an encoder)",
    "attn_impl": "attention implementation: auto, sdpa, naive, fused_softmax, triton, local (blockwise sliding "
                 "window, O(T x window)) or flex (FlexAttention) (charformer.attention)",
    "norm": "normalisation: rmsnorm or layernorm",
    "rope_base": "base of the rotary position angles (larger: slower rotation, longer wavelengths)",
    "window": "sliding-window attention: keys within this many characters back (None: the whole block)",
    "shorten": "hourglass shortening factor K: the middle layers run over ceil(T / K) positions (1: a plain model)",
    "shorten_layers": "hourglass layer split as three counts: full-resolution, shortened, full-resolution layers "
                      "(summing to n_layers)",
    "shorten_pool": "how K characters become one position: mean, linear or gbst (bidirectional models only)",
    "shorten_upsample": "how a shortened position becomes K again: repeat or linear",
    "gbst_blocks": "gbst pooling: candidate block sizes 1..gbst_blocks characters",
}

RUN_FILES = ("last", "best", "last.old", "best.old", "metrics.jsonl", "curves.png", "results.json", "tensorboard")


@dataclass
class RunArgs:
    """Where a run writes, and what happens to an earlier run there."""

    out: Path
    resume: bool = False  # continue the run in `out` from its last checkpoint
    overwrite: bool = False  # replace an earlier run in `out`


def add_run_options(p: argparse.ArgumentParser, model_group: str) -> None:
    """--config, --resume, --overwrite, and the model options (under `model_group`); the script adds --out."""
    p.add_argument("--config", help="TOML file of options (flags given here override it)")
    p.add_argument("--resume", action="store_true", default=None, help="continue the run in --out from its last "
                   "checkpoint, on the same loss curve")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an earlier run in --out "
                   "(default: refuse)")
    # layer_heads is written by charformer.prune (head pruning), not chosen for a new model
    add_dataclass_options(p, ModelConfig, skip=("vocab_size", "layer_heads"), group=model_group, helps=MODEL_HELP)


def run_args(given: dict, default_out: str | None = None) -> RunArgs:
    """The `RunArgs` of the options `given` (`charformer.cli.parse_with_config`); refuses an --out that holds
    a run unless --resume or --overwrite."""
    run = RunArgs(Path(given.get("out") or default_out), bool(given.get("resume")), bool(given.get("overwrite")))
    if not run.resume and not run.overwrite and (run.out / "last").exists():
        raise CharformerError(f"{run.out} already holds a run: pass --resume to continue it, --overwrite to replace "
                              "it, or choose another --out")
    return run


def start_processes(cfg: TrainConfig) -> tuple[torch.device, DistInfo]:
    """This process's device and place among the ranks (under torchrun: one process per device; else one).
    Silences stdout on ranks other than 0."""
    device = pick_device(cfg.device)
    dist_info = init_distributed(device.type)
    if device.type == "cuda" and dist_info.enabled:
        device = torch.device("cuda", dist_info.local_rank)
    quiet_unless_main(dist_info)
    return device, dist_info


def describe_batch(cfg: TrainConfig, dist_info: DistInfo, unit: str = "sequences") -> str:
    """One line: how many `unit` an optimizer step reads, per rank and in all."""
    total = cfg.batch_size * dist_info.world_size * cfg.grad_accum
    return (f"effective batch: {cfg.batch_size} per rank x {dist_info.world_size} ranks x {cfg.grad_accum} "
            f"accumulation = {total} {unit}")


def clear_run(out_dir: str | Path) -> None:
    """Delete the artifacts of an earlier run in `out_dir` (only the files `fit` and the scripts write)."""
    for name in RUN_FILES:
        path = Path(out_dir) / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def train(run: RunArgs, dist_info: DistInfo, model, objective, cfg: TrainConfig, checkpoints, **fit_options) -> dict | None:
    """Make `run.out` ready (clearing an earlier run with --overwrite), `fit` on every rank, leave the process
    group. Returns fit's summary on rank 0, None on the other ranks (whose work is then done)."""
    if run.overwrite and not run.resume and dist_info.is_main:
        clear_run(run.out)  # only now: a run with bad input must leave the old one untouched
    run.out.mkdir(parents=True, exist_ok=True)
    barrier(dist_info)
    summary = fit(model, objective, cfg, run.out, checkpoints, resume=run.resume, dist_info=dist_info, **fit_options)
    shutdown(dist_info)
    return summary if dist_info.is_main else None


def peak_rss_mb() -> float:
    """The peak resident memory of this process so far, in MiB (getrusage; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_results(out: Path, results: dict, *, t_start: float, device: torch.device, dist_info: DistInfo,
                  cfg: TrainConfig) -> dict:
    """Write ``out/results.json``: `results` and what every run records (wall time since `t_start` in
    seconds, peak memory in MiB, ranks, effective batch, device, torch version). Returns what it wrote."""
    results = {**results, "wall_seconds": round(time.time() - t_start, 1), "peak_rss_mb": peak_rss_mb(),
               "world_size": dist_info.world_size,
               "effective_batch": cfg.batch_size * dist_info.world_size * cfg.grad_accum,
               "device": str(device), "torch": torch.__version__}
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results
