"""Where passkey prompts hide their key: spread (the default) or fixed depths."""

from __future__ import annotations

import inspect

import pytest

from ropext.commands.eval_run_command import eval_run
from ropext.commands.passkey_command import eval_passkey
from ropext.errors import RopextError
from ropext.evaluate.passkey import (
    DEFAULT_DEPTHS,
    DEFAULT_TRIALS,
    SPREAD,
    PasskeyOptions,
    depth_label,
    options_from_command_line,
    prompt_plan,
)


def test_spread_puts_every_prompt_at_its_own_depth_one_per_stratum() -> None:
    options = PasskeyOptions(lengths=(1024,), trials=10, seed=3)
    plan = prompt_plan(options, 1024)
    assert len(plan) == 10 and options.prompts_per_length() == 10
    for i, (depth, key) in enumerate(plan):
        assert i / 10 <= depth < (i + 1) / 10
        assert 10000 <= key <= 99999
    assert len({depth for depth, _ in plan}) == 10
    assert prompt_plan(options, 1024) == plan  # a pure function of seed and length
    assert prompt_plan(PasskeyOptions(lengths=(1024,), trials=10, seed=4), 1024) != plan
    assert prompt_plan(options, 2048) != plan


def test_fixed_depths_put_trials_prompts_at_each_depth() -> None:
    options = PasskeyOptions(lengths=(512,), depths=(0.0, 0.5, 1.0), trials=3)
    plan = prompt_plan(options, 512)
    assert [depth for depth, _ in plan] == [0.0] * 3 + [0.5] * 3 + [1.0] * 3
    assert options.prompts_per_length() == 9
    assert {depth_label(d, options) for d, _ in plan} == {"0", "0.5", "1"}


def test_spread_accuracy_is_reported_per_fifth_of_the_depth_range() -> None:
    options = PasskeyOptions(lengths=(512,))
    assert [depth_label(d, options) for d in (0.0, 0.19, 0.2, 0.55, 0.99, 1.0)] == [
        "0.1", "0.1", "0.3", "0.5", "0.9", "0.9",
    ]  # fmt: skip


def test_command_line_defaults_are_the_task_defaults() -> None:
    assert DEFAULT_DEPTHS == SPREAD
    for command in (eval_passkey, eval_run):
        parameters = inspect.signature(command).parameters
        assert parameters["depths"].default == DEFAULT_DEPTHS
        assert parameters["trials"].default == DEFAULT_TRIALS
    assert options_from_command_line((1024,)).spread


@pytest.mark.parametrize("depths", ["", "0,2", "near,far", "spreadd"])
def test_bad_depths_are_one_clear_error(depths: str) -> None:
    with pytest.raises(RopextError, match="--depths"):
        options_from_command_line((1024,), depths=depths)
