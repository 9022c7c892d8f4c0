"""Pass-key retrieval (DPRoPE, appendix B.3): find a 5-digit key hidden at a depth in filler text.

By default every prompt sits at a depth of its own (``spread``): the filler is the same sentence
repeated, so prompts at one depth that differ only in their key are nearly the same input and mostly
pass or fail together; N prompts at N depths measure N positions. A list of fixed depths (``--depths
0,0.5,1``) puts ``trials`` prompts at each, as the papers' grids do.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

import torch

from ropext.data.tokenized import encode, special_prefix
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
SPREAD = "spread"
"""``--depths spread``: prompt i of N at a seeded depth within [i/N, (i+1)/N]."""
DEFAULT_DEPTHS = SPREAD
DEFAULT_TRIALS = 10
SPREAD_BINS = 5
"""A spread run reports its accuracy per fifth of the depth range, labelled by the fifth's middle."""


@dataclass(frozen=True)
class PasskeyOptions:
    lengths: tuple[int, ...]
    """Prompt lengths in tokens (each prompt is at most this long, within one filler sentence)."""
    depths: tuple[float, ...] | str = DEFAULT_DEPTHS
    """Where the key sits (0 = right after the instruction, 1 = right before the question): ``spread``
    (every prompt at its own, stratified depth) or fixed depths."""
    trials: int = DEFAULT_TRIALS
    """Prompts (different keys) per length when spread, per length and depth when the depths are fixed."""
    seed: int = 0
    """Seeds the keys; the same seed gives the same prompts."""
    max_new_tokens: int = 8

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise RopextError(f"--trials must be at least 1, got {self.trials}")
        if isinstance(self.depths, str) and self.depths != SPREAD:
            raise RopextError(f"--depths {self.depths!r}: write {SPREAD} or numbers between 0 and 1, e.g. 0,0.5,1")

    @property
    def spread(self) -> bool:
        return self.depths == SPREAD

    def prompts_per_length(self) -> int:
        return self.trials if self.spread else self.trials * len(self.depths)


def prompt_plan(options: PasskeyOptions, length: int) -> list[tuple[float, int]]:
    """(depth, key) of every prompt of one length, a pure function of the seed and the length."""
    rng = random.Random(f"{options.seed}-{length}")
    if options.spread:
        plan = []
        for i in range(options.trials):
            depth = (i + rng.random()) / options.trials
            plan.append((depth, rng.randint(10000, 99999)))
        return plan
    return [(depth, rng.randint(10000, 99999)) for depth in options.depths for _ in range(options.trials)]


def depth_label(depth: float, options: PasskeyOptions) -> str:
    """The per-depth key a prompt counts under: its fixed depth, or the middle of its fifth when spread."""
    if not options.spread:
        return f"{depth:g}"
    fifth = min(int(depth * SPREAD_BINS), SPREAD_BINS - 1)
    return f"{(fifth + 0.5) / SPREAD_BINS:g}"


@dataclass(frozen=True)
class PasskeyPrompt:
    ids: list[int]
    key: int


def build_prompt(tokenizer: Any, length: int, depth: float, key: int) -> PasskeyPrompt:
    """Instruction, filler with the needle at ``depth``, question; as many fillers as fit in ``length``."""
    if not 0.0 <= depth <= 1.0:
        raise RopextError(f"depth {depth} must be between 0 and 1")
    needle = NEEDLE.format(key=key)
    prefix = special_prefix(tokenizer)  # <bos> where the tokenizer puts one, as the model saw text in training
    fixed = len(prefix) + len(encode(tokenizer, TASK_INTRO + needle + QUESTION))
    per_filler = len(encode(tokenizer, FILLER))
    fillers = (length - fixed) // per_filler
    if fillers < 1:
        raise RopextError(f"passkey length {length} is too short for the prompt; use at least {fixed + per_filler}")
    while True:
        before = round(depth * fillers)
        text = TASK_INTRO + FILLER * before + needle + FILLER * (fillers - before) + QUESTION
        ids = prefix + encode(tokenizer, text)
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
    tracker.begin(f"passkey {prepared.label}", len(todo) * options.prompts_per_length())
    results = dict(done)
    model, tokenizer = prepared.model, prepared.tokenizer
    for length in todo:
        hits: dict[str, list[bool]] = {}
        answers = []
        for depth, key in prompt_plan(options, length):
            prompt = build_prompt(tokenizer, length, depth, key)
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
            hits.setdefault(depth_label(depth, options), []).append(hit)
            answers.append(
                {
                    "depth": round(depth, 4),
                    "key": prompt.key,
                    "answer": answer.strip(),
                    "correct": hit,
                    "prompt_tokens": len(prompt.ids),
                }
            )
            tracker.advance(f"passkey {prepared.label} @ {format_length(length)}")
        per_depth = {label: sum(h) / len(h) for label, h in sorted(hits.items(), key=lambda item: float(item[0]))}
        accuracy = sum(a["correct"] for a in answers) / len(answers)
        result = {"accuracy": accuracy, "depths": per_depth, "trials": options.trials, "samples": answers}
        results[str(length)] = result
        tracker.finished(str(length), result)
    return {str(length): results[str(length)] for length in options.lengths}


def options_from_command_line(
    lengths: tuple[int, ...],
    *,
    depths: str = SPREAD,
    trials: int = DEFAULT_TRIALS,
    seed: int = 0,
    **_other_tasks: Any,
) -> PasskeyOptions:
    """PasskeyOptions from command-line values; bad depths or trials fail before any model loads."""
    if depths.strip() == SPREAD:
        return PasskeyOptions(lengths=lengths, depths=SPREAD, trials=trials, seed=seed)
    try:
        depth_values = tuple(float(d) for d in depths.split(",") if d.strip())
    except ValueError:
        raise RopextError(f"--depths {depths!r}: write {SPREAD} or numbers between 0 and 1, e.g. 0,0.5,1") from None
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
