"""The pure parts of sequence parallelism: the group layout, the head rule and its message, the checks, the
shards and their labels, and the resume identity."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ropext.errors import RopextError
from ropext.train.sequence_parallel import (
    IGNORE,
    check_heads,
    check_sequence_parallel,
    shard,
    shifted_labels,
    split_world,
    working_sizes,
)


def test_groups_are_consecutive_ranks_and_each_group_is_one_data_parallel_rank() -> None:
    layout = [split_world(rank, 8, 4) for rank in range(8)]
    assert layout == [(0, 2, 0), (0, 2, 1), (0, 2, 2), (0, 2, 3), (1, 2, 0), (1, 2, 1), (1, 2, 2), (1, 2, 3)]


def test_working_sizes_divide_the_heads_and_divide_or_replicate_the_kv_heads() -> None:
    assert working_sizes(32, 8) == [2, 4, 8, 16, 32]
    assert working_sizes(9, 3) == [3, 9]  # SmolLM2-135M
    assert working_sizes(12, 4) == [2, 4, 12]  # 3 and 6 neither divide 4 nor are multiples of it
    assert working_sizes(14, 2) == [2, 14]


def test_a_model_whose_heads_do_not_split_gets_the_sizes_that_work() -> None:
    check_heads(9, 3, 3, "m")
    with pytest.raises(RopextError, match=r"9 attention heads and 3 key/value heads.*--sequence-parallel 3 or 9$"):
        check_heads(9, 3, 2, "m")
    with pytest.raises(RopextError, match="cannot use sequence parallelism"):
        check_heads(1, 1, 2, "m")
    # Gemma 3 270M: one key/value head, replicated for 2 or 4
    with pytest.raises(RopextError, match=r"4 attention heads and 1 key/value head, .*--sequence-parallel 2 or 4$"):
        check_heads(4, 1, 3, "gemma3-270m")


@pytest.mark.parametrize(
    ("size", "world", "length", "attn", "message"),
    [
        (2, 3, 128, "sdpa", "does not divide the 3 process"),
        (4, 8, 130, "sdpa", "does not split into 4 equal shards"),
        (2, 2, 128, "eager", "needs --attn sdpa"),
    ],
)
def test_checks_without_a_model(size: int, world: int, length: int, attn: str, message: str) -> None:
    with pytest.raises(RopextError, match=message):
        check_sequence_parallel(size, world, length, attn)


def test_one_process_per_window_needs_no_check() -> None:
    check_sequence_parallel(1, 3, 127, "eager")


def test_labels_cross_shard_boundaries() -> None:
    window = torch.arange(10, 18)[None]
    labels = shifted_labels(window)
    assert labels.tolist() == [[11, 12, 13, 14, 15, 16, 17, IGNORE]]
    first, second = shard(labels, 0, 2), shard(labels, 1, 2)
    # The last token of shard 0 (13) predicts the first token of shard 1 (14).
    assert shard(window, 0, 2)[0, -1] == 13 and first[0, -1] == 14 == shard(window, 1, 2)[0, 0]
    assert second.tolist() == [[15, 16, 17, IGNORE]]
    assert torch.equal(torch.cat([first, second], dim=1), labels)


def test_the_resume_identity_names_the_group_size_only_when_used() -> None:
    from ropext.train.trainer import Plan

    def settings(size: int) -> dict:
        request = SimpleNamespace(
            train_length=128, seed=0, skip_docs=0, skip_length=1, position_skip=None, short_share=0.0,
            needle_share=0.0, practice=("single",), sequence_parallel=size,
        )  # fmt: skip
        scaling = SimpleNamespace(to_dict=lambda: {"factors": [1.0]})
        plan = SimpleNamespace(request=request, scaling=scaling, corpus_fingerprint="c")
        return Plan.settings(plan)  # type: ignore[arg-type]

    assert "sequence_parallel" not in settings(1)  # checkpoints written before the option still resume
    assert settings(2)["sequence_parallel"] == 2
    assert settings(2) != settings(4)
