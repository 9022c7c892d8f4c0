"""Whether one window of L tokens can fit in a device's memory at all, checked before a model loads.

A length far beyond what a machine can hold (``--lengths 10000000000``) should be one line naming the
limit, not a MemoryError from deep inside prompt building or a forward pass. The estimate is a lower
bound (docs/decisions.md): what a forward pass over one window must hold at once, the key/value cache
of every layer plus one layer's activations, weights not counted, plus the length x length tensors the
attention implementation builds (none for ``ropext_sdpa`` or ``sdpa`` without sliding layers; a boolean mask
for ``sdpa`` with sliding layers; scores and float masks for ``eager``). A length refused here can never
run on this device; one that passes can still run out of memory, which is then torch's own error.
"""

from __future__ import annotations

import math
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


def attention_bytes_per_square(config: Any, dtype_bytes: int, implementation: str) -> int:
    """Lower bound of what attention ``implementation`` (as the model runs it) holds at once per query x key pair
    of a window: times L² it is bytes."""
    from ropext.model.layout import text_config
    from ropext.model.sliding_attention import has_sliding_layers

    if implementation == "sdpa":
        # Full layers run with is_causal and no mask; sliding layers get one boolean [1, 1, L, L] mask, built
        # once per forward and shared by them (SDPA may convert it to floats, which is not counted).
        return 1 if has_sliding_layers(config) else 0
    if implementation == "eager":
        # One layer's scores [heads, L, L] and one float mask per kind of layer (full, sliding), all in the dtype.
        config = text_config(config)
        kinds = len(set(getattr(config, "layer_types", None) or ["full_attention"]))
        return dtype_bytes * (int(config.num_attention_heads) + kinds)
    return 0  # ropext_sdpa and flash attention: blocks, never the whole square


def window_bytes(length: int, per_token: int, per_square: int) -> int:
    """Lower bound of one window's memory: linear in its length, plus the attention's square term."""
    return length * per_token + length * length * per_square


def largest_window(total: int, per_token: int, per_square: int) -> int:
    """The longest window whose :func:`window_bytes` fits in ``total`` bytes."""
    if per_square == 0:
        return total // per_token
    # per_square L² + per_token L <= total, the positive root rounded down (integers: lengths of 10^10 and more)
    largest = (math.isqrt(per_token * per_token + 4 * per_square * total) - per_token) // (2 * per_square)
    while window_bytes(largest + 1, per_token, per_square) <= total:
        largest += 1
    while largest > 0 and window_bytes(largest, per_token, per_square) > total:
        largest -= 1
    return largest


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


def check_lengths_fit(
    lengths: Iterable[int],
    config: Any,
    device: str,
    dtype: Any,
    option: str = "--lengths",
    attn_implementation: str = "sdpa",
) -> None:
    """Refuse the first length whose window cannot fit in ``device``'s memory, naming the largest that can."""
    from ropext.model.sliding_attention import attention_implementation

    total = device_memory(device)
    if total is None:
        return
    per_token = bytes_per_token(config, dtype.itemsize)
    # What load_model will run: ``sdpa`` becomes ``ropext_sdpa`` on a model with sliding layers.
    implementation = attention_implementation(config, attn_implementation)
    per_square = attention_bytes_per_square(config, dtype.itemsize, implementation)
    largest = largest_window(total, per_token, per_square)
    readable = largest // 1024 * 1024 if largest >= 1024 else largest  # "9642k" rather than 9873633
    where = "this machine's memory (cpu)" if device == "cpu" else device
    what = (
        "key/value cache, activations and attention's L x L tensors"
        if per_square
        else "key/value cache and activations"
    )
    for length in lengths:
        if length > largest:
            raise RopextError(
                f"{option} {length}: a window of {length} tokens needs at least "
                f"{_size(window_bytes(length, per_token, per_square))} ({what}) but {where} has {_size(total)}; "
                f"lengths up to about {format_length(readable)} fit, choose shorter ones or a device with more memory"
            )


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
