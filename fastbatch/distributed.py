"""Ranks for WindowLoader: torch.distributed's when it is initialised, else what the user says."""

from __future__ import annotations

from typing import Any

import torch

from fastbatch._checks import check_int


def resolve_ranks(rank: Any, world_size: Any) -> tuple[int, int]:
    """``(rank, world_size)``: each ``None`` defaults to torch.distributed's, or to one process.

    Without an initialised process group both must be given or both left
    out: a lone ``world_size=4`` would otherwise silently make every process
    rank 0 and read the same shard.
    """
    dist = torch.distributed
    initialised = dist.is_available() and dist.is_initialized()
    if not initialised and (rank is None) != (world_size is None):
        raise ValueError(
            f"give both rank and world_size (got rank={rank!r}, world_size={world_size!r}), "
            "or initialise torch.distributed and leave both out"
        )
    world_size = (dist.get_world_size() if initialised else 1) if world_size is None else world_size
    rank = (dist.get_rank() if initialised else 0) if rank is None else rank
    world_size = check_int("world_size", world_size, minimum=1)
    rank = check_int("rank", rank, minimum=0)
    if rank >= world_size:
        raise ValueError(f"rank must be in [0, world_size) = [0, {world_size}), got rank={rank}")
    return rank, world_size
