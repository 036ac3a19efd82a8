"""Data-parallel training across processes: PyTorch DistributedDataParallel (DDP), or fully sharded (FSDP).

Launched by ``torchrun``, every process (rank) runs the same training loop on its share of each batch. Scripts
work unchanged with one process: nothing here does anything unless ``WORLD_SIZE`` > 1.

* DDP (the default): every rank holds a full copy of the model; after each backward pass DDP averages the
  gradients across ranks (an all-reduce), so all copies take the same optimizer step.
* FSDP (``--fsdp``; ZeRO stage 3, Rajbhandari et al. 2020, as PyTorch's ``fully_shard`` implements it): every
  rank keeps only a 1/N slice of each parameter, gradient and optimizer moment, so 1/N of the model's training
  state, not the whole of it, must fit one device. Before a transformer block runs, its parameters are
  all-gathered; after its backward pass the gradients are reduce-scattered, each rank keeping the slice it owns.
  The arithmetic is the same as DDP's, and so is the loss curve. Checkpoints are gathered to full tensors and
  written by rank 0 in the same format as any other (`full_weights`, `full_tensor`), so they load in a single
  process and a run may resume under either strategy or none.

How the data is split: every rank draws the *same* global batch from the same seeded generator and keeps its own
contiguous slice of rows. Averaging the gradients of equal slices gives exactly the gradient of the global batch,
so N processes with per-rank batch b follow the same loss curve as one process with batch N*b (up to float
summation order), and resuming needs only one generator state. Backend: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, distribute_tensor

from .model import Block


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, evaluates for the record and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun set up (env:// rendezvous); a no-op for a single process.

    On CUDA, each rank uses GPU ``LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return info


def wrap_model(model: torch.nn.Module, info: DistInfo, *, fsdp: bool) -> torch.nn.Module:
    """The module the training loop calls: `model` itself in a single process; under torchrun a DDP wrapper of
    it, or (`fsdp`) `model` itself, sharded in place: each transformer block is one FSDP unit (gathered only
    while it runs), and the rest (embeddings, final norm, task head) the root unit. Call it before building
    the optimizer: sharding replaces the parameters."""
    if not info.enabled:
        return model
    if not fsdp:
        device = next(model.parameters()).device
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if isinstance(module, Block):
            fully_shard(module)
    fully_shard(model)
    return model


def gradient_sync(run_model: torch.nn.Module, sync: bool):
    """Context for one micro-batch's backward pass: with ``sync=False`` (all but the last micro-batch of a
    gradient accumulation) DDP skips its all-reduce and FSDP its reduce-scatter; gradients accumulate locally."""
    if isinstance(run_model, torch.nn.parallel.DistributedDataParallel):
        return nullcontext() if sync else run_model.no_sync()
    if hasattr(run_model, "set_requires_gradient_sync"):  # an FSDP module
        run_model.set_requires_gradient_sync(sync)
    return nullcontext()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole of a sharded tensor (an FSDP parameter or optimizer moment; a collective: every rank must
    call it), or `t` itself."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def shard_like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`value` (a full tensor of `param`'s shape, e.g. an optimizer moment read from a checkpoint) sharded as
    `param` is, if it is; every rank holds the whole `value`, so each just keeps its slice (no communication)."""
    if not isinstance(param, DTensor):
        return value
    return distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """For an FSDP-sharded `model`: its whole state dict, gathered on the CPU of rank 0 (other ranks get an
    empty dict; a collective: every rank must call it). None for any other model: its own tensors are whole."""
    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def shard(batch: list[torch.Tensor], info: DistInfo) -> list[torch.Tensor]:
    """This rank's contiguous slice (along dim 0) of each tensor of a global batch."""
    if not info.enabled:
        return batch
    n = batch[0].shape[0]
    if n % info.world_size:
        raise ValueError(f"global batch of {n} rows does not split evenly over {info.world_size} ranks")
    per = n // info.world_size
    return [t[info.rank * per : (info.rank + 1) * per] for t in batch]


def mean_across_ranks(value: float, info: DistInfo, device: torch.device) -> float:
    """Average a Python float over ranks (so every rank logs and decides on the same number)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / info.world_size


def quiet_unless_main(info: DistInfo) -> None:
    """Discard this process's stdout unless it is rank 0, so that a script's reports appear once, however many
    ranks print them; stderr (warnings, errors) still shows every rank."""
    if not info.is_main:
        sys.stdout = open(os.devnull, "w")  # left open: it is this process's stdout from now on


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
