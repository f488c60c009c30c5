"""Sharded evaluation over a ``torch.distributed`` process group (e.g. under ``torchrun``).

Every rank loads the same model and data; each evaluates a contiguous run of whole blocks of
``batch_size`` samples (see :mod:`robustlab.evaluation.runner`), and the per-sample tables are
gathered so that the merged table equals a single-process run with the same seed.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from robustlab.errors import RobustlabError

__all__ = ["all_gather", "close", "init_process_group", "launched_distributed", "rank_and_world", "shard_range"]


def launched_distributed() -> bool:
    """Whether this process was started as one of several ranks (``torchrun`` sets ``WORLD_SIZE``)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_process_group(device: torch.device) -> torch.device:
    """Join the process group described by the ``torchrun`` environment variables
    (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``).

    Uses NCCL for CUDA devices (each rank on GPU ``LOCAL_RANK``) and Gloo otherwise. Returns the
    device this rank should use.
    """
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RobustlabError(f"a distributed run needs the environment variables {missing} "
                             "(start it with torchrun)")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")
    return device


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialized default process group."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RobustlabError("a distributed run needs an initialized torch.distributed process group "
                             "(robustlab.evaluation.distributed.init_process_group under torchrun)")
    return dist.get_rank(), dist.get_world_size()


def shard_range(n: int, batch_size: int, rank: int, world: int) -> tuple[int, int]:
    """Positions ``[start, stop)`` of rank ``rank``: a contiguous run of whole blocks.

    Blocks are split as evenly as possible (the first ranks take one more where they do not
    divide); a rank may get none (``start == stop == n``) when there are fewer blocks than ranks.
    """
    if not 0 <= rank < world:
        raise RobustlabError(f"rank must lie in [0, {world}), got {rank}")
    blocks = -(-n // batch_size)
    per, extra = divmod(blocks, world)
    first = rank * per + min(rank, extra)
    last = first + per + (1 if rank < extra else 0)
    return min(first * batch_size, n), min(last * batch_size, n)


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def close() -> None:
    """Leave the process group if this process is in one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
