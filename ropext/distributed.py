"""Where this process stands among the processes of a launch (torchrun, the deepspeed launcher).

The one place that reads rank and world size, from the launcher's environment or from the joined
process group, so search, evaluation and fine-tuning agree on who is rank 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ropext.errors import RopextError

LAUNCHER_KEYS = ("WORLD_SIZE", "LOCAL_RANK")
"""Environment a launcher (deepspeed, torchrun) sets for each process it starts."""


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a launch."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def environment_world() -> World:
    """The world the launcher's environment describes; a single process (rank 0 of 1) without one.

    RANK falls back to LOCAL_RANK (a one-node launch), as the fine-tuning always read it.
    """
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        rank = int(os.environ.get("RANK", str(local_rank)))
    except ValueError:
        raise RopextError("WORLD_SIZE, RANK and LOCAL_RANK must be integers when set") from None
    return World(rank=rank, local_rank=local_rank, size=size)


def launcher_world() -> World | None:
    """The world a launcher (``deepspeed``, ``torchrun``) started this process in; None without one."""
    if not any(key in os.environ for key in LAUNCHER_KEYS):
        return None
    return environment_world()


def joined_world() -> World:
    """Rank and size of the joined process group; a single process when none is joined."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(rank=dist.get_rank(), local_rank=environment_world().local_rank, size=dist.get_world_size())
    return World()


def join_launched_processes() -> World:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); then the joined world."""
    import torch
    import torch.distributed as dist

    launched = environment_world()
    if launched.size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(launched.local_rank)
        dist.init_process_group(backend)
    return joined_world()


def launched_device() -> str:
    """The device a launched process drives: the GPU of its local rank, else the CPU."""
    import torch

    return f"cuda:{environment_world().local_rank}" if torch.cuda.is_available() else "cpu"
