"""The permissions a new file or folder gets: what ``open`` and ``mkdir`` would give it under the user's umask.

Files written through a temporary name (``tempfile.mkstemp`` / ``mkdtemp``, then a rename, so a reader never
sees a half-written file) would otherwise keep ``mkstemp``'s private 0600 and ``mkdtemp``'s 0700.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask. Linux reports it in /proc; elsewhere it is read by setting it and setting it back,
    under a lock, since no call reads it without changing it."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    found = re.search(r"^Umask:\s*([0-7]+)$", status, re.MULTILINE)
    if found:
        return int(found.group(1), 8)
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """0666 less the umask: what ``open(path, "w")`` creates."""
    return 0o666 & ~current_umask()


def new_folder_mode() -> int:
    """0777 less the umask: what ``mkdir`` creates."""
    return 0o777 & ~current_umask()


def follow_umask(*paths: Path) -> None:
    """Give files (and folders, with everything in them) this process just wrote the permissions ``open`` and
    ``mkdir`` give new ones: some writers (safetensors) create private 0600 files whatever the umask."""
    file_mode, folder_mode = new_file_mode(), new_folder_mode()
    for path in paths:
        if path.is_dir():
            path.chmod(folder_mode)
            for inner in path.rglob("*"):
                inner.chmod(folder_mode if inner.is_dir() else file_mode)
        elif path.exists():
            path.chmod(file_mode)
