"""What ``--device`` may name, checked before a model loads: a typo or a missing GPU is one line, not a
traceback from deep inside torch."""

from __future__ import annotations

from typing import Any

from ropext.errors import RopextError

SUPPORTED = ("cpu", "cuda", "mps")


def check_device(spec: str, option: str = "--device") -> str:
    """``spec`` as given when this machine can run on it (``cpu``, ``cuda``, ``cuda:N``, ``mps``);
    otherwise a `RopextError` that names the device and what is available instead."""
    import torch

    text = spec.strip()
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):  # torch's parser names every backend it knows, not what works here
        raise RopextError(f"{option} {spec!r} is not a device; use {_available(torch)}") from None
    if device.type not in SUPPORTED:
        raise RopextError(f"{option} {spec!r}: ropext runs on cpu, cuda or mps; use {_available(torch)}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RopextError(f"{option} {spec}: no CUDA GPU is visible on this machine; use {option} cpu")
        if device.index is not None and device.index >= count:
            raise RopextError(
                f"{option} {spec}: this machine has {count} CUDA GPU{'s' if count > 1 else ''} "
                f"(cuda:0 to cuda:{count - 1})"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RopextError(f"{option} {spec}: Apple's MPS backend is not available here; use {_available(torch)}")
    return text


def _available(torch: Any) -> str:
    """The devices this machine offers, as --device values (``torch``: the module, imported lazily)."""
    names = ["cpu"]
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        names += ["cuda"] + [f"cuda:{i}" for i in range(count)]
    if torch.backends.mps.is_available():
        names.append("mps")
    return ", ".join(names)
