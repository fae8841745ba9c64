"""Process-group helpers shared by training and sharded encoding (torchrun / accelerate launches)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed() -> tuple[int, int]:
    """(rank, world size); initialises torch.distributed when launched by torchrun/accelerate."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if world > 1 and torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def process_device() -> str | None:
    """This process's own GPU under a multi-process launch (cuda:LOCAL_RANK); None without CUDA."""
    return f"cuda:{local_rank()}" if torch.cuda.is_available() else None


def barrier(world: int) -> None:
    """Wait for every process (a no-op in a single process)."""
    if world > 1:
        dist.barrier()


def shutdown(world: int) -> None:
    """Leave the process group cleanly (torch warns about a group left open at exit), every process
    together: one that tears its group down while a peer still talks to it can abort the peer."""
    if world > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
