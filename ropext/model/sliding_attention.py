"""Sliding-window attention without a query x key mask: the ``ropext_sdpa`` attention implementation.

transformers' ``sdpa`` builds, for every sliding-window layer, a boolean ``[batch, 1, L, L]`` mask (16 GiB at
128k tokens; PyTorch's memory-efficient kernel may turn it into a float mask two to four times that size, and
the flash kernel cannot take a mask at all). ``ropext_sdpa`` is the same PyTorch SDPA with one change: a
sliding layer whose mask would be the plain causal window (no padding, queries the last tokens of the keys)
gets no mask from transformers, and attention runs over blocks of queries instead, each block against the
keys its window reaches, with a mask of ``block x (block + window - 1)``. Everything else (full-attention
layers, padding, packed sequences, static caches, bidirectional masks) goes through transformers' own
``sdpa`` mask and attention functions unchanged, so nothing but the sliding layers' memory differs.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "ropext_sdpa"
"""The name under which transformers knows this implementation (``attn_implementation=NAME``)."""

BLOCK = 1024
"""Queries per block. Attention then holds ``BLOCK x (BLOCK + window - 1)`` scores at once, whatever the length;
a larger block calls the kernel fewer times, a smaller one computes fewer masked-out scores."""


def has_sliding_layers(config: Any) -> bool:
    """Whether some layer of the model attends through a sliding window (Gemma 2/3, Mistral, Phi-3...)."""
    from ropext.model.layout import text_config

    config = text_config(config)
    if getattr(config, "sliding_window", None) is None or getattr(config, "attention_chunk_size", None):
        return False
    layer_types = getattr(config, "layer_types", None)
    return layer_types is None or "sliding_attention" in layer_types


def attention_implementation(config: Any, requested: str = "sdpa") -> str:
    """The implementation to load a model with: ``ropext_sdpa`` for ``sdpa`` on a model with sliding layers (the
    only ones it changes), whatever was asked otherwise (docs/decisions.md, Models)."""
    if requested == "sdpa" and has_sliding_layers(config):
        register()
        return NAME
    return requested


def sliding_window_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: Any = 0,
    kv_offset: int = 0,
    attention_mask: torch.Tensor | None = None,
    local_size: int | None = None,
    allow_is_causal_skip: bool = True,
    **kwargs: Any,
) -> torch.Tensor | None:
    """transformers' ``sdpa_mask``, except that a plain sliding-window causal mask is not built (None):
    :func:`sliding_window_attention` computes that pattern block by block instead."""
    if _plain_window(
        q_length, kv_length, q_offset, kv_offset, attention_mask, local_size, allow_is_causal_skip, kwargs
    ):
        return None
    return sdpa_mask(
        batch_size=batch_size,
        q_length=q_length,
        kv_length=kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        attention_mask=attention_mask,
        local_size=local_size,
        allow_is_causal_skip=allow_is_causal_skip,
        **kwargs,
    )


def _plain_window(
    q_length: int,
    kv_length: int,
    q_offset: Any,
    kv_offset: int,
    attention_mask: torch.Tensor | None,
    local_size: int | None,
    allow_is_causal_skip: bool,
    kwargs: dict[str, Any],
) -> bool:
    """Whether the mask asked for is exactly "each query sees itself and the ``local_size - 1`` keys before it",
    with the queries the last ``q_length`` of the keys, so that None (no mask) carries it unambiguously."""
    config = kwargs.get("config")
    if local_size is None or config is None or local_size != getattr(config, "sliding_window", None):
        return False  # a full layer, or a chunked one (which passes its chunk size as local_size)
    if getattr(config, "attention_chunk_size", None) or not allow_is_causal_skip:
        return False  # extra mask functions, packed sequences or a compiled decode: transformers' mask
    if torch.compiler.is_compiling() or not isinstance(q_offset, int):
        return False  # reading values below would break a graph; static caches carry tensor offsets
    # Shorter than the window: transformers' own mask, no larger than queries x window, and its None means
    # is_causal there, which would be wrong for the block path.
    if kv_length <= local_size or q_offset + q_length != kv_offset + kv_length:
        return False
    return attention_mask is None or bool(attention_mask.all())


def sliding_window_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa`` attention, with sliding layers that got no mask computed block by block."""
    window = (
        kwargs.pop("sliding_window", None) if "sliding_window" in kwargs else getattr(module, "sliding_window", None)
    )
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    blockwise = (
        window is not None
        and attention_mask is None
        and causal
        and key.shape[2] > window
        and kwargs.get("position_bias") is None
        and kwargs.get("softcap") is None
        and not kwargs.get("output_attentions", False)
    )
    if not blockwise:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    groups = int(getattr(module, "num_key_value_groups", 1) or 1)
    output = windowed_sdpa(query, key, value, int(window), scaling=scaling, dropout=dropout, groups=groups)
    return output.transpose(1, 2).contiguous(), None


def windowed_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    window: int,
    scaling: float | None = None,
    dropout: float = 0.0,
    groups: int = 1,
    block: int | None = None,
) -> torch.Tensor:
    """Causal sliding-window attention, ``[batch, heads, q, d]``: query ``i`` (key position ``i + kv - q``: the
    queries are the last of the keys) attends to the ``window`` keys ending at its own position.

    Each block of queries runs one SDPA call against its keys only, so the largest score or mask tensor is
    ``block x (block + window - 1)`` per head, whatever the length.
    """
    block = block or BLOCK
    q_length, kv_length = query.shape[2], key.shape[2]
    shift = kv_length - q_length
    outputs = []
    for start in range(0, q_length, block):
        stop = min(start + block, q_length)
        first, last = max(0, start + shift - window + 1), stop + shift
        keys, values = key[:, :, first:last], value[:, :, first:last]
        if groups > 1:  # repeated per block: only the block's keys are copied
            keys, values = repeat_kv(keys, groups), repeat_kv(values, groups)
        distance = (
            torch.arange(start + shift, last, device=query.device)[:, None]
            - torch.arange(first, last, device=query.device)[None, :]
        )
        mask = (distance >= 0) & (distance < window)
        outputs.append(
            torch.nn.functional.scaled_dot_product_attention(
                query[:, :, start:stop], keys, values, attn_mask=mask, dropout_p=dropout, scale=scaling
            )
        )
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)


def register() -> None:
    """Make ``ropext_sdpa`` known to transformers (attention and mask); calling it again changes nothing."""
    AttentionInterface.register(NAME, sliding_window_attention)
    AttentionMaskInterface.register(NAME, sliding_window_mask)
