"""Where ropext keeps what it downloads or computes once (models from wheels, tokenised corpora)."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$ROPEXT_CACHE_DIR``, else ``$XDG_CACHE_HOME/ropext``, else ``~/.cache/ropext``."""
    explicit = os.environ.get("ROPEXT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ropext"
