"""Which of PyTorch's SDPA kernels attention may use, for search, evaluation and training alike."""

from __future__ import annotations

import contextlib
from typing import Any

from ropext.errors import RopextError

SDPA_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math", "default")


def check_sdpa_backend(name: str) -> str:
    """``name`` if it is one of `SDPA_BACKENDS`; else the error naming them (the option is --sdpa-backend in
    every command that has it)."""
    if name not in SDPA_BACKENDS:
        raise RopextError(f"unknown --sdpa-backend {name!r}; use one of {', '.join(SDPA_BACKENDS)}")
    return name


def sdpa_context(name: str, device: str) -> Any:
    """A context that restricts SDPA to the named backend(s): ``auto`` is cuDNN, then flash, then the rest (on
    CUDA); ``default`` is PyTorch's own choice. A no-op off CUDA."""
    check_sdpa_backend(name)
    if name == "default" or not str(device).startswith("cuda"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    table = {
        "cudnn": [SDPBackend.CUDNN_ATTENTION],
        "flash": [SDPBackend.FLASH_ATTENTION],
        "efficient": [SDPBackend.EFFICIENT_ATTENTION],
        "math": [SDPBackend.MATH],
        # Measured on an H100 at head dim 64 (docs/results.md): cuDNN is fastest; the others are fallbacks.
        "auto": [
            SDPBackend.CUDNN_ATTENTION,
            SDPBackend.FLASH_ATTENTION,
            SDPBackend.EFFICIENT_ATTENTION,
            SDPBackend.MATH,
        ],
    }
    return sdpa_kernel(table[name], set_priority=name == "auto")
