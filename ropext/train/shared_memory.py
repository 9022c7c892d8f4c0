"""DeepSpeed's shared-memory all-reduce buffers on the CPU, released as soon as every rank has mapped them.

On the CPU accelerator, when every rank runs on one machine, DeepSpeed's ``init_distributed`` gives each rank a
POSIX shared-memory buffer (``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>``, 66 MB) and maps
every other rank's. It never unlinks them: each two-process run left 132 MB of RAM in /dev/shm until a
reboot, whether it ended cleanly or was killed. Once every rank has mapped every buffer the names serve no
one, so each rank unlinks its own then; the memory goes back when the last process holding it exits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SHARED_MEMORY = Path("/dev/shm")
PREFIX = "deepspeed_allreduce_buffer"
"""DeepSpeed's name for them (``SHM_BUFFER_NAME`` in its ``csrc/cpu/comm/shm.cpp``)."""


def allreduce_buffer(rank: int, environ: Mapping[str, str] | None = None) -> Path:
    """Where DeepSpeed's all-reduce buffer of ``rank`` lives, as its ``shm_initialize`` names it."""
    environ = os.environ if environ is None else environ
    address, port = environ.get("MASTER_ADDR", ""), environ.get("MASTER_PORT", "")
    return SHARED_MEMORY / f"{PREFIX}_{os.getuid()}_{address}_{port}_{rank}"


def release_allreduce_buffer(rank: int) -> None:
    """Unlink this rank's buffer name once every rank is past ``init_distributed`` (each maps all the buffers
    there, before it returns). A run without such buffers (a GPU, one process, ranks on several machines)
    has nothing to unlink."""
    import torch.distributed as dist

    dist.barrier()
    allreduce_buffer(rank).unlink(missing_ok=True)
