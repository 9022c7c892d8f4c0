"""Whether one window of L tokens can fit in a device's memory at all, checked before a model loads.

A length far beyond what a machine can hold (``--lengths 10000000000``) should be one line naming the
limit, not a MemoryError from deep inside prompt building or a forward pass. The estimate is a lower
bound (docs/decisions.md): what a forward pass over one window must hold at once, the key/value cache
of every layer plus one layer's activations, weights not counted. A length refused here can never run
on this device; one that passes can still run out of memory, which is then torch's own error.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from ropext.errors import RopextError
from ropext.lengths import format_length


def bytes_per_token(config: Any, dtype_bytes: int) -> int:
    """Lower bound of the memory one token of a window takes during a forward pass (with a cache):
    keys and values in every layer, plus the hidden state, q/k/v/output and MLP activations of one layer."""
    from ropext.model.layout import text_config

    config = text_config(config)
    hidden = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    intermediate = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    layers = int(config.num_hidden_layers)
    return dtype_bytes * (2 * layers * kv_heads * head_dim + 4 * hidden + 2 * intermediate)


def device_memory(device: str) -> int | None:
    """Total memory of ``device`` in bytes (a GPU's, or the machine's RAM for cpu); None when unknown."""
    import torch

    parsed = torch.device(device)
    if parsed.type == "cuda":
        index = parsed.index if parsed.index is not None else torch.cuda.current_device()
        return int(torch.cuda.get_device_properties(index).total_memory)
    if parsed.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # not a POSIX system
            return None
    return None


def check_lengths_fit(lengths: Iterable[int], config: Any, device: str, dtype: Any, option: str = "--lengths") -> None:
    """Refuse the first length whose window cannot fit in ``device``'s memory, naming the largest that can."""
    total = device_memory(device)
    if total is None:
        return
    per_token = bytes_per_token(config, dtype.itemsize)
    largest = total // per_token
    readable = largest // 1024 * 1024 if largest >= 1024 else largest  # "9642k" rather than 9873633
    where = "this machine's memory (cpu)" if device == "cpu" else device
    for length in lengths:
        if length > largest:
            raise RopextError(
                f"{option} {length}: a window of {length} tokens needs at least {_size(length * per_token)} "
                f"(key/value cache and activations) but {where} has {_size(total)}; lengths up to about "
                f"{format_length(readable)} fit, choose shorter ones or a device with more memory"
            )


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
