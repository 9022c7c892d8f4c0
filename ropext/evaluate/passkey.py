"""Pass-key retrieval (DPRoPE, appendix B.3): find a 5-digit key hidden at a depth in filler text."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

import torch

from ropext.data.tokenized import encode
from ropext.errors import RopextError
from ropext.evaluate.progress import Tracker
from ropext.evaluate.task import Task
from ropext.lengths import format_length
from ropext.model.prepared import PreparedModel

TASK_INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there."
)
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class PasskeyOptions:
    lengths: tuple[int, ...]
    """Prompt lengths in tokens (each prompt is at most this long, within one filler sentence)."""
    depths: tuple[float, ...] = DEFAULT_DEPTHS
    """Where the key sits: 0 = right after the instruction, 1 = right before the question."""
    trials: int = 5
    """Prompts (different keys) per length and depth."""
    seed: int = 0
    """Seeds the keys; the same seed gives the same prompts."""
    max_new_tokens: int = 8

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise RopextError(f"--trials must be at least 1, got {self.trials}")


@dataclass(frozen=True)
class PasskeyPrompt:
    ids: list[int]
    key: int


def build_prompt(tokenizer: Any, length: int, depth: float, key: int) -> PasskeyPrompt:
    """Instruction, filler with the needle at ``depth``, question; as many fillers as fit in ``length``."""
    if not 0.0 <= depth <= 1.0:
        raise RopextError(f"depth {depth} must be between 0 and 1")
    needle = NEEDLE.format(key=key)
    fixed = len(encode(tokenizer, TASK_INTRO + needle + QUESTION))
    per_filler = len(encode(tokenizer, FILLER))
    fillers = (length - fixed) // per_filler
    if fillers < 1:
        raise RopextError(f"passkey length {length} is too short for the prompt; use at least {fixed + per_filler}")
    while True:
        before = round(depth * fillers)
        text = TASK_INTRO + FILLER * before + needle + FILLER * (fillers - before) + QUESTION
        ids = encode(tokenizer, text)
        if len(ids) <= length or fillers == 1:
            return PasskeyPrompt(ids, key)
        fillers -= 1  # joins between pieces may tokenise slightly longer than the pieces alone


def first_integer(text: str) -> int | None:
    match = re.search(r"\d+", text)
    return int(match.group()) if match else None


def evaluate_passkey(
    prepared: PreparedModel, options: PasskeyOptions, tracker: Tracker, done: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Greedy-decode the answer for every (length, depth, trial); accuracy per length and per depth."""
    done = done or {}
    todo = [length for length in options.lengths if str(length) not in done]
    tracker.begin(f"passkey {prepared.label}", len(todo) * len(options.depths) * options.trials)
    results = dict(done)
    model, tokenizer = prepared.model, prepared.tokenizer
    for length in todo:
        rng = random.Random(f"{options.seed}-{length}")
        per_depth: dict[str, float] = {}
        answers = []
        for depth in options.depths:
            correct = 0
            for _ in range(options.trials):
                prompt = build_prompt(tokenizer, length, depth, rng.randint(10000, 99999))
                ids = torch.tensor([prompt.ids], device=prepared.device)
                with torch.inference_mode():
                    out = model.generate(
                        ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=options.max_new_tokens,
                        do_sample=False,
                        pad_token_id=tokenizer.eos_token_id,
                    )
                answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
                hit = first_integer(answer) == prompt.key
                correct += hit
                answers.append(
                    {
                        "depth": depth,
                        "key": prompt.key,
                        "answer": answer.strip(),
                        "correct": hit,
                        "prompt_tokens": len(prompt.ids),
                    }
                )
                tracker.advance(f"passkey {prepared.label} @ {format_length(length)}")
            per_depth[f"{depth:g}"] = correct / options.trials
        accuracy = sum(per_depth.values()) / len(per_depth)
        result = {"accuracy": accuracy, "depths": per_depth, "trials": options.trials, "samples": answers}
        results[str(length)] = result
        tracker.finished(str(length), result)
    return {str(length): results[str(length)] for length in options.lengths}


def options_from_command_line(
    lengths: tuple[int, ...], *, depths: str = "0,0.25,0.5,0.75,1", trials: int = 5, seed: int = 0, **_other_tasks: Any
) -> PasskeyOptions:
    """PasskeyOptions from command-line values; bad depths or trials fail before any model loads."""
    try:
        depth_values = tuple(float(d) for d in depths.split(",") if d.strip())
    except ValueError:
        raise RopextError(f"--depths {depths!r}: write numbers between 0 and 1, e.g. 0,0.5,1") from None
    if not depth_values or any(not 0 <= d <= 1 for d in depth_values):
        raise RopextError(f"--depths {depths!r}: every depth must be between 0 and 1")
    return PasskeyOptions(lengths=lengths, depths=depth_values, trials=trials, seed=seed)


TASK = Task(
    name="passkey",
    run=evaluate_passkey,
    options=options_from_command_line,
    columns=("accuracy", "depths"),
    unit="prompt",
)
