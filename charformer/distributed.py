"""Data-parallel training across processes with PyTorch DistributedDataParallel (DDP).

Launched by ``torchrun``, every process (rank) holds a full copy of the model; after each backward pass DDP
averages the gradients across ranks (an all-reduce), so all copies take the same optimizer step. Scripts work
unchanged with one process: nothing here does anything unless ``WORLD_SIZE`` > 1.

How the data is split: every rank draws the *same* global batch from the same seeded generator and keeps its own
contiguous slice of rows. Averaging the gradients of equal slices gives exactly the gradient of the global batch,
so N processes with per-rank batch b follow the same loss curve as one process with batch N*b (up to float
summation order), and resuming needs only one generator state. Backend: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
