"""The defaults of `ropext finetune`'s training windows: ``--position-skip``, ``--short-share`` and
``--needle-share`` default to `AUTO`, which `plan_finetune` resolves once into numbers from the scaling, the
train length and the tokenizer.

Why these choices: on SmolLM2-135M 8k -> 64k (bench/results/retrieval-v2-h200/summary.md) plain windows
retrieved a passkey at 64k 0.55 of the time, PoSE 0.75, PoSE with retrieval practice in a quarter of the
windows 1.00; with short factors of their own, a quarter of the windows at short positions kept 8k
perplexity at the original model's level. Each choice falls back to plain training where it cannot apply.
"""

from __future__ import annotations

from typing import Final, Literal

from ropext.errors import RopextError

AUTO: Final = "auto"
"""The value of an option that `plan_finetune` chooses (`resolve_position_skip`, `resolve_short_share`,
`resolve_needle_share`); nothing after planning ever sees it."""
OFF: Final = "off"
"""--position-skip off: plain positions 0 .. train length - 1."""
Auto = Literal["auto"]

AUTO_SHORT_SHARE = 0.25
"""Share of windows at short positions when the scaling has short factors of its own."""
AUTO_NEEDLE_SHARE = 0.25
"""Share of windows with retrieval practice when the train length holds it."""


def parse_position_skip(text: str) -> int | Auto | None:
    """``auto``, ``off`` (None) or a length (64k)."""
    from ropext.lengths import parse_length

    word = text.strip().lower()
    if word == AUTO:
        return AUTO
    if word == OFF:
        return None
    return parse_length(text, "--position-skip")


def parse_share(text: str, option: str) -> float | Auto:
    """``auto`` or a number; its range is checked where the option is used (check_positions, check_needle_share)."""
    word = text.strip().lower()
    if word == AUTO:
        return AUTO
    try:
        return float(word)
    except ValueError:
        raise RopextError(f"{option} must be a number in [0, 1) or {AUTO}, got {text!r}") from None


def resolve_position_skip(value: int | Auto | None, train_length: int, original: int, target: int) -> int | None:
    """`AUTO`: PoSE to the scaling's ``target`` (max_position_embeddings) when it lies beyond both the train length
    and the original length, so that skipping positions reaches lengths the windows alone do not; else off."""
    if value != AUTO:
        return value
    return target if target > train_length and target > original else None


def resolve_short_share(
    value: float | Auto, has_short_factors: bool, position_skip: int | None, train_length: int, original: int
) -> float:
    """`AUTO`: `AUTO_SHORT_SHARE` when the scaling carries short factors of its own (``search --keep-short-context``,
    ``--short-length``), positions are skipped and the windows fit the original length; else 0.

    A scaling without short factors gets none: mixed windows would give it factors of 1 (with_short_regime),
    a change to the saved model the user did not ask for."""
    if value != AUTO:
        return value
    fits = position_skip is not None and train_length <= original
    return AUTO_SHORT_SHARE if has_short_factors and fits else 0.0


def resolve_needle_share(value: float | Auto, train_length: int, shortest: int) -> float:
    """`AUTO`: `AUTO_NEEDLE_SHARE` when a window of ``train_length`` holds practice (``shortest`` is
    `NeedlePlan.shortest_length`), else 0."""
    if value != AUTO:
        return value
    return AUTO_NEEDLE_SHARE if train_length >= shortest else 0.0


def describe(
    position_skip: int | None, short_share: float, needle_share: float, practice: tuple[str, ...] = ("single",)
) -> str:
    """The training windows in words, for the line before training starts; the practice kinds (``--practice``)
    only when they are not the default, one key among four (needles.DEFAULT_PRACTICE, spelled out here so that
    the command line's start-up does not import numpy)."""
    if position_skip is None:
        parts = ["plain positions"]
    else:
        parts = [f"PoSE positions up to {position_skip}"]
        if short_share:
            parts.append(f"{_percent(short_share)} of windows at short positions")
    if not needle_share:
        parts.append("no retrieval practice")
    else:
        kinds = "" if practice == ("single",) else f" ({', '.join(practice)})"
        parts.append(f"retrieval practice{kinds} in {_percent(needle_share)} of windows")
    return ", ".join(parts)


def _percent(share: float) -> str:
    return f"{share * 100:.3g}%"
