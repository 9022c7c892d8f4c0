"""Rank and world size, read in one place from a launcher's environment or the joined process group."""

from __future__ import annotations

import pytest

from ropext.distributed import World, environment_world, join_launched_processes, joined_world, launcher_world
from ropext.errors import RopextError

KEYS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)


def test_without_a_launcher_this_is_the_only_process() -> None:
    assert environment_world() == World(rank=0, local_rank=0, size=1)
    assert environment_world().is_main
    assert launcher_world() is None


def test_launcher_environment_gives_rank_local_rank_and_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    expected = World(rank=3, local_rank=1, size=4)
    assert environment_world() == expected
    assert launcher_world() == expected
    assert not expected.is_main


def test_rank_falls_back_to_the_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert launcher_world() == World(rank=2, local_rank=2, size=1)


def test_rank_alone_is_not_a_launch_but_still_names_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    assert launcher_world() is None
    assert environment_world().rank == 1 and not environment_world().is_main


@pytest.mark.parametrize("key", KEYS)
def test_a_non_integer_value_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    monkeypatch.setenv(key, "two")
    with pytest.raises(RopextError, match="must be integers"):
        environment_world()


def test_no_process_group_is_joined_for_a_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    monkeypatch.setenv("WORLD_SIZE", "1")
    assert join_launched_processes() == World()
    assert joined_world() == World()
    assert not dist.is_initialized()
