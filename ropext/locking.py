"""One run at a time per output file: an exclusive lock on a sidecar ``FILE.lock`` that holds the owner's pid.

``fcntl.flock`` locks belong to the open file, so the kernel drops them when their process ends, however it
ends (kill -9 included): a lock file left behind by a killed run never blocks the next one.
"""

from __future__ import annotations

import os
from pathlib import Path

from ropext.errors import RopextError
from ropext.permissions import new_file_mode


class FileLock:
    """Held from ``acquire`` (or ``with``) to ``release``; a second run on the same file fails at once with
    one line naming the pid that holds it, or, with ``wait``, waits until the first releases it (for work that
    one run does for all, such as converting a model once)."""

    def __init__(self, path: Path, option: str = "--json", wait: bool = False) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self.option = option
        self.wait = wait
        self._fd: int | None = None

    def acquire(self) -> FileLock:
        import fcntl

        while True:
            try:
                self.lock_path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, new_file_mode())
            except OSError as err:
                raise RopextError(
                    f"cannot write beside {self.path} ({err.strerror}): give a {self.option} path in a folder you "
                    "can write to"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RopextError(
                    f"{self.path} is in use by another run (pid {holder}); wait for it to end or give another "
                    f"{self.option} path"
                ) from None
            # The run before may have released and removed the lock file between our open and our lock: then
            # we hold a lock on a file nobody else will find. Lock the file that is there now instead.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.lock_path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        # Removed while still locked, so no other run can be holding it.
        self.lock_path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
