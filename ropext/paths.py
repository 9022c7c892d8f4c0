"""Where ropext keeps what it downloads or computes once (models from wheels, tokenised corpora), and the
check that an output path can be written before any work starts."""

import os
from pathlib import Path

from ropext.errors import RopextError


def cache_dir() -> Path:
    """``$ROPEXT_CACHE_DIR``, else ``$XDG_CACHE_HOME/ropext``, else ``~/.cache/ropext``."""
    explicit = os.environ.get("ROPEXT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ropext"


def check_output_file(path: Path | None, option: str) -> None:
    """Refuse, before any work starts, an output file that cannot be written: say which path and why.

    Checked: the path is not a folder, an existing file is writable, and its parent folder exists and is
    writable or can be created (the nearest existing ancestor is a writable folder, not a file)."""
    if path is None:
        return
    if path.is_dir():
        raise RopextError(f"{option} {path} is a folder; give a file path inside it, e.g. {path / _example(option)}")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise RopextError(f"{option} {path} is not writable (read-only); choose another path or change its mode")
        return
    _check_parent(path.parent, option, path)


def check_output_folder(path: Path | None, option: str, staged_beside: bool = False) -> None:
    """Like `check_output_file`, for an output folder: a file there, or a read-only place, is refused.

    ``staged_beside``: the folder is built next to ``path`` and renamed into place (export), so the
    folder that holds it must be writable even when ``path`` exists."""
    if path is None:
        return
    if path.exists():
        if not path.is_dir():
            raise RopextError(f"{option} {path} is a file; give a folder path")
        if not os.access(path, os.W_OK | os.X_OK):
            raise RopextError(f"{option} {path} is not writable (read-only); choose another folder")
        if not staged_beside:
            return
    _check_parent(path.parent, option, path)


def _check_parent(parent: Path, option: str, path: Path) -> None:
    """The folder that will hold ``path``: it exists and is writable, or can be created under a writable one."""
    ancestor = parent.absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise RopextError(f"{option} {path}: cannot create its folder, {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        missing = "" if ancestor == parent.absolute() else f" (its folder {parent} would be created there)"
        raise RopextError(
            f"{option} {path}: folder {ancestor} is not writable (read-only){missing}; choose another path"
        )


def _example(option: str) -> str:
    return {"--plot": "factors.png", "--out": "factors.yaml"}.get(option, "results.json")
