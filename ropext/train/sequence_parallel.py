"""Sequence parallelism (``ropext finetune --sequence-parallel N``) on DeepSpeed's Ulysses for Hugging Face models.

N processes (a sequence-parallel group) train one window together: each holds 1/N of its positions, and
DeepSpeed's `UlyssesSPAttentionHF` exchanges attention heads for positions (all-to-all) around every
attention call, so each process attends over the whole window with 1/N of the heads. The world is
data-parallel × sequence-parallel: ranks ``g·N .. g·N + N - 1`` form group ``g`` (DeepSpeed's
parallel_state_sp), and group ``g`` is data-parallel rank ``g``.

What this module adds around DeepSpeed's attention:
- the checks (head counts, world size, window length), before anything heavy loads;
- the shards: labels are shifted on the whole window before it is cut, so the last token of shard k still
  predicts the first token of shard k + 1 (the loss side lives in ropext/train/loss.py);
- one RoPE regime per window: longrope and the dynamic types pick their frequencies per forward from the
  largest position id they see, and a shard sees only its own; `hold_window_regime` makes every shard
  see the window's largest position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ropext.errors import RopextError

IGNORE = -100
"""Label of a position that predicts nothing (the window's last one), as torch's cross_entropy ignores it."""
ATTENTION = ("sdpa", "flash_attention_2", "flash_attention_3")
"""Attention that DeepSpeed's Ulysses wraps; eager needs a full [L, L] mask, which Ulysses discards."""


@dataclass(frozen=True)
class SequenceGroup:
    """This process's sequence-parallel group: the torch process group, its rank in it and its size."""

    group: Any
    rank: int
    size: int


def split_world(rank: int, world_size: int, size: int) -> tuple[int, int, int]:
    """(data-parallel rank, data-parallel size, sequence-parallel rank) of global ``rank``; groups are
    contiguous ranks, as DeepSpeed's parallel_state_sp builds them."""
    return rank // size, world_size // size, rank % size


def working_sizes(heads: int, kv_heads: int) -> list[int]:
    """Sequence-parallel sizes above 1 that Ulysses can split ``heads`` query and ``kv_heads`` key/value heads
    over: N divides the query heads, and N divides the kv heads or is a multiple of them (then each kv head
    is replicated N / kv_heads times)."""
    return [n for n in range(2, heads + 1) if heads % n == 0 and (kv_heads % n == 0 or n % kv_heads == 0)]


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def check_heads(heads: int, kv_heads: int, size: int, model: str) -> None:
    """One line naming the sizes that work when ``model``'s heads do not split ``size`` ways."""
    if size == 1 or size in working_sizes(heads, kv_heads):
        return
    sizes = working_sizes(heads, kv_heads)
    works = f"use --sequence-parallel {' or '.join(map(str, sizes))}" if sizes else "it cannot use sequence parallelism"
    raise RopextError(
        f"--sequence-parallel {size}: {model} has {_count(heads, 'attention head')} and "
        f"{_count(kv_heads, 'key/value head')}, which "
        f"do not split {size} ways (the size must divide the attention heads, and divide the key/value heads or "
        f"be a multiple of them); {works}"
    )


def check_sequence_parallel(size: int, world_size: int, train_length: int, attn: str) -> None:
    """The checks that need no model: the group fits the world, the window splits evenly, the attention works."""
    if size < 1:
        raise RopextError(f"--sequence-parallel must be at least 1, got {size}")
    if size == 1:
        return
    if world_size % size:
        raise RopextError(
            f"--sequence-parallel {size} does not divide the {world_size} process(es) of this run (the world is "
            f"data-parallel × sequence-parallel); use --gpus {size} or another multiple of {size}"
        )
    if train_length % size:
        raise RopextError(
            f"--train-length {train_length} tokens does not split into {size} equal shards; use a multiple of {size}"
        )
    if attn not in ATTENTION:
        raise RopextError(f"--sequence-parallel needs --attn sdpa or flash attention (Ulysses cannot run {attn})")


def model_heads(config: Any) -> tuple[int, int]:
    """(attention heads, key/value heads) of a transformers config (its text part for multimodal ones)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(text.num_attention_heads)
    return heads, int(getattr(text, "num_key_value_heads", None) or heads)


def shifted_labels(input_ids: torch.Tensor) -> torch.Tensor:
    """The next token of every position of whole windows [rows, L]; the last position predicts nothing."""
    labels = torch.full_like(input_ids, IGNORE)
    labels[:, :-1] = input_ids[:, 1:]
    return labels


def shard(tensor: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """Shard ``rank`` of ``size`` equal shards of [rows, L, ...] along the positions."""
    length = tensor.shape[1]
    if length % size:
        raise ValueError(f"length {length} does not split into {size} shards")
    step = length // size
    return tensor[:, rank * step : (rank + 1) * step]


def register_ulysses(model: Any, size: int, micro_batch: int, train_length: int, attn: str) -> Any:
    """Route ``model``'s attention through DeepSpeed's Ulysses; the ``mpu`` to give ``deepspeed.initialize``.

    DeepSpeed replaces transformers' attention function of that name in this process, and builds the
    sequence-parallel groups (torch.distributed must be up).
    """
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

    return UlyssesSPAttentionHF.register_with_transformers(
        model_name_or_path=model,
        core_attn_implementation=attn,
        sequence_parallel_size=size,
        micro_batch_size=micro_batch,
        seq_length=train_length,
        # Rows of short and long regime run as separate forwards of fewer rows (ropext/train/loss.py).
        seq_length_is_variable=True,
    )


def hold_window_regime(model: Any, group: SequenceGroup) -> list[Any]:
    """Make every rotary module of ``model`` choose its frequencies from the window's largest position id.

    longrope (short or long factors) and the dynamic types decide per forward from ``max(position_ids) + 1``;
    a shard that lies within the original context would otherwise run the short factors while the rest of
    its window runs the long ones. Each rotary call takes the group's largest position (one scalar
    all-reduce), appends it as an extra position when this shard lacks it and drops that position's cos/sin
    again, so the model's own rotary code makes the choice. Returns the hook handles.
    """
    import torch.distributed as dist

    from ropext.model.rotary import rotary_modules

    handles = []
    for _, module in rotary_modules(model):
        extended: list[bool] = [False]

        def before(module: Any, args: tuple, kwargs: dict, extended: list[bool] = extended) -> tuple[tuple, dict]:
            in_kwargs = "position_ids" in kwargs
            positions = kwargs["position_ids"] if in_kwargs else args[1]
            local = positions.max().reshape(1)
            largest = local.clone()
            dist.all_reduce(largest, op=dist.ReduceOp.MAX, group=group.group)
            extended[0] = bool(largest > local)
            if extended[0]:
                positions = torch.cat([positions, largest.expand(positions.shape[0], 1).to(positions.dtype)], dim=1)
                if in_kwargs:
                    kwargs = {**kwargs, "position_ids": positions}
                else:
                    args = (args[0], positions, *args[2:])
            return args, kwargs

        def after(module: Any, args: tuple, kwargs: dict, output: Any, extended: list[bool] = extended) -> Any:
            if not extended[0]:
                return output
            return tuple(t[:, :-1] for t in output)

        handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(module.register_forward_hook(after, with_kwargs=True))
    return handles
