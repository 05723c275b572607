"""torchrun / DistributedDataParallel plumbing: process-group set-up, rank-0 writes, sharding and gathering."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank, size and the device it drives."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.size > 1


def launched_by_torchrun() -> bool:
    """torchrun (and other launchers) export WORLD_SIZE; a plain run does not."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_world(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group when launched by torchrun (NCCL on GPUs, gloo on CPUs); else a world of one."""
    if not launched_by_torchrun():
        return World(), device
    rank = int(os.environ["RANK"])
    size = int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return World(rank, size, local), device


def shutdown(world: World) -> None:
    """Leave the process group."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    """Wait for every rank (no-op in a world of one)."""
    if world.distributed:
        dist.barrier()


def all_gather(x: Tensor, world: World) -> list[Tensor]:
    """Every rank's copy of the same-shaped tensor ``x``, in rank order (``[x]`` in a world of one)."""
    if not world.distributed:
        return [x]
    parts = [torch.empty_like(x) for _ in range(world.size)]
    dist.all_gather(parts, x.contiguous())
    return parts


def broadcast_object(obj: object, world: World) -> object:
    """Rank 0's value of ``obj`` on every rank."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
