"""The command line that continues an interrupted run: this command as it was typed, ready to paste."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence


def command_line(add: Sequence[str] = ()) -> str:
    """``ropext`` and this process's arguments, shell-quoted, with the flags in ``add`` not already there.

    DeepSpeed's launcher adds ``--local_rank=N`` to each training process's arguments; the user never typed it.
    """
    arguments = [a for a in sys.argv[1:] if not a.startswith(("--local_rank", "--local-rank"))]
    arguments += [a for a in add if a not in arguments]
    return shlex.join(["ropext", *arguments])
