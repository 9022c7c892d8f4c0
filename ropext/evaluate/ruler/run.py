"""``ropext eval ruler``: RULER's tasks at each length, greedy decoding in batches of prompts of one length,
scored as RULER.

Results per length: ``{"tasks": {task: {"score", "samples": [...], ...}}, "average"}``, saved after every
(task, length). A rerun skips the (task, length) pairs already in the result file, so adding tasks or
lengths to a finished run computes only what is new.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from ropext.data.tokenized import special_prefix
from ropext.errors import RopextError
from ropext.evaluate.progress import Tracker
from ropext.evaluate.ruler.chat import ChatWrap, chat_wrap, has_chat_template
from ropext.evaluate.ruler.prompts import Prompt, build_prompt
from ropext.evaluate.ruler.scoring import score
from ropext.evaluate.ruler.tasks import (
    ALL_TASKS,
    NOISE_HAYSTACK,
    QA_UNAVAILABLE,
    RULER_PROMPTS,
    SPECS,
    QaData,
    Resources,
    TaskSample,
    essay_haystack,
    load_qa_data,
    make_sample,
    noise_haystack,
    parse_tasks,
)
from ropext.evaluate.task import Task
from ropext.lengths import format_length
from ropext.model.prepared import PreparedModel

DEFAULT_SAMPLES = 20
_CHARS_PER_TOKEN = 8
"""Essay text read per token of the longest length: more than any tokenizer needs (it wraps around anyway)."""


@dataclass(frozen=True)
class RulerOptions:
    """What a RULER result means (these fields are stored, and a rerun must repeat them), plus three
    init-only choices that are not stored: which tasks to run, question files, batch size.

    ``tasks``, ``qa_data`` and ``batch_size`` only choose what to compute and how, so a rerun may change
    them and extend the same result file (a QA result records its own data file's sha256 and is redone when
    the file changes). As init-only values they are lost by ``dataclasses.replace``: pass them again.
    """

    lengths: tuple[int, ...]
    """Lengths in tokens: every prompt and its tokens to generate take this many, or one fewer (a qa prompt is
    shorter when its question file runs out of documents)."""
    samples: int = DEFAULT_SAMPLES
    """Prompts per task and length."""
    seed: int = 0
    """Sample ``i`` of a task at a length is drawn from ``random.Random(f"{seed}-{task}-{length}-{i}")``."""
    haystack_corpus: str | None = None
    """Essay-like text for niah_single_2/3, niah_multikey_1, niah_multivalue and niah_multiquery (as
    ``--corpus``: files, folder, hub dataset, python-stdlib); None: the prose shipped with ropext; ``noise``:
    RULER's noise sentences."""
    max_new_tokens: int | None = None
    """Tokens generated per answer for every task; None: RULER's (niah 128, vt 30, cwe 120, fwe 50, qa 32).
    Prompt and answer fit in the length together."""
    chat_template: bool | None = None
    """Wrap each prompt in the tokenizer's chat template (the prompt as the user's turn, then the generation prompt
    and RULER's answer prefix), as RULER does for chat models. None: where the tokenizer has one;
    `resolve_chat_template` turns it into the choice made, which is what a result file stores."""
    ruler_prompts: str = RULER_PROMPTS
    """The RULER version the prompts follow (stored; not an option to set)."""
    tasks: InitVar[str | Sequence[str]] = ALL_TASKS
    """Comma-separated names or a sequence; "all": RULER's 13 tasks."""
    qa_data: InitVar[Sequence[str]] = ()
    """A SQuAD-style file (enables qa_1) and/or a HotpotQA-style file (qa_2)."""
    batch_size: InitVar[int] = 1
    """Prompts of one token length generated together, at most this many (so no batch is padded)."""

    def __post_init__(self, tasks: str | Sequence[str], qa_data: Sequence[str], batch_size: int) -> None:
        if not self.lengths:
            raise RopextError("no lengths given: write them comma-separated, e.g. --lengths 4k,8k,16k")
        if self.samples < 1:
            raise RopextError(f"--samples must be at least 1, got {self.samples}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise RopextError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if batch_size < 1:
            raise RopextError(f"--batch-size must be at least 1, got {batch_size}")
        object.__setattr__(self, "tasks", parse_tasks(tasks))
        object.__setattr__(self, "qa_data", tuple(str(path) for path in qa_data))
        object.__setattr__(self, "batch_size", batch_size)


def resolve_chat_template(options: RulerOptions, tokenizer: Any) -> RulerOptions:
    """``options`` with ``chat_template`` decided for this tokenizer: on where it has a chat template unless
    turned off; asking for one that the tokenizer lacks is an error."""
    has = has_chat_template(tokenizer)
    if options.chat_template and not has:
        raise RopextError(
            "--chat-template: the model's tokenizer has no chat template; run without it (or with --no-chat-template)"
        )
    chosen = has if options.chat_template is None else options.chat_template
    return dataclasses.replace(
        options, chat_template=chosen, tasks=options.tasks, qa_data=options.qa_data, batch_size=options.batch_size
    )


def refuse_other_prompts(path: Path | None) -> None:
    """An error if ``path`` holds RULER results of other prompts than these (`RULER_PROMPTS`): their scores mean
    something else, so a run never resumes into them. Checked before the model is loaded; a file that is not a
    RULER result is left to the result file's own checks."""
    if path is None or not path.is_file():
        return
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return
    if not isinstance(data, dict) or data.get("task") != "ruler" or not isinstance(data.get("options"), dict):
        return
    theirs = data["options"].get("ruler_prompts")
    if theirs != RULER_PROMPTS:
        made = f"RULER prompts {theirs}" if theirs else "ropext's earlier RULER prompts (before they followed RULER's)"
        raise RopextError(
            f"{path} holds results made with {made}; these prompts follow {RULER_PROMPTS}, a different run: "
            "choose a new --json path"
        )


def generate_batch(prepared: PreparedModel, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy continuations of ``prompts`` together, with the KV cache. Prompts of one length go as they are;
    prompts of different lengths are left-padded, and the padding masked.

    The attention mask is passed even when it is all ones: without one, ``generate`` would guess padding from
    pad-token ids in the prompts. transformers drops an all-ones mask (``masking_utils._ignore_causal_mask_sdpa``),
    so SDPA runs with ``is_causal`` and its fused kernels; a padded batch instead gets a materialised
    ``[batch, 1, L, L]`` mask, gigabytes at 32k tokens.
    """
    tokenizer = prepared.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad = 0 if pad is None else pad
    width = max(len(ids) for ids in prompts)
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts], device=prepared.device)
    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=prepared.device)
    with torch.inference_mode():
        out = prepared.model.generate(
            input_ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
        )
    return [tokenizer.decode(row[width:], skip_special_tokens=True) for row in out.tolist()]


Item = TypeVar("Item")


def equal_length_batches(items: Iterable[Item], size: int, length: Callable[[Item], int]) -> Iterator[list[Item]]:
    """``items`` in batches of at most ``size`` of one ``length`` each, so that no batch needs padding. A batch
    goes as soon as it is full, so that few items wait; the part-filled ones go last, in the order of their first
    items. Items keep their order within a batch and within a length."""
    waiting: dict[int, list[Item]] = {}
    for item in items:
        key = length(item)
        batch = waiting.setdefault(key, [])
        batch.append(item)
        if len(batch) == size:
            yield waiting.pop(key)
    yield from waiting.values()


def _is_done(entry: dict[str, Any] | None, task: str, qa: dict[str, QaData]) -> bool:
    if entry is None:
        return False
    if "unavailable" in entry:
        return task not in qa  # question data given now: compute it
    if task in qa:  # a QA result stands for its data file
        return entry.get("data", {}).get("sha256") == qa[task].sha256
    return True


def _average(tasks: dict[str, Any]) -> float | None:
    scores = [entry["score"] for entry in tasks.values() if entry.get("score") is not None]
    return sum(scores) / len(scores) if scores else None


def _ordered(tasks: dict[str, Any]) -> dict[str, Any]:
    rank = {name: i for i, name in enumerate(ALL_TASKS)}
    return dict(sorted(tasks.items(), key=lambda item: rank.get(item[0], len(rank))))


def evaluate_ruler(
    prepared: PreparedModel, options: RulerOptions, tracker: Tracker, done: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Every requested (task, length) not in ``done``: prompts fitted to the length, greedy answers, scores."""
    done = done or {}
    tasks: tuple[str, ...] = options.tasks
    qa = load_qa_data(options.qa_data)
    todo = {
        length: [t for t in tasks if not _is_done(done.get(str(length), {}).get("tasks", {}).get(t), t, qa)]
        for length in options.lengths
    }
    runnable = [(length, t) for length, names in todo.items() for t in names if SPECS[t].family != "qa" or t in qa]
    needs_essay = any(SPECS[t].niah is not None and SPECS[t].niah.haystack == "essay" for _, t in runnable)
    # The essay text is read only when a task needs it (a corpus can be large).
    essay = essay_haystack(options.haystack_corpus, _CHARS_PER_TOKEN * max(options.lengths)) if needs_essay else None
    resources = Resources(essay or noise_haystack(), qa)
    options = resolve_chat_template(options, prepared.tokenizer)
    if options.chat_template:  # the template writes its own special tokens
        wrap, prefix = chat_wrap(prepared.tokenizer), []
    else:
        wrap, prefix = None, special_prefix(prepared.tokenizer)
    prompting = Prompting(prefix, wrap)
    tracker.begin(f"ruler {prepared.label}", len(runnable) * options.samples)

    results: dict[str, dict[str, Any]] = {}
    for length in options.lengths:
        key = str(length)
        entry = done.get(key, {})
        finished = dict(entry.get("tasks", {}))
        for task in todo[length]:
            if SPECS[task].family == "qa" and task not in qa:
                finished[task] = {"score": None, "unavailable": QA_UNAVAILABLE[task]}
            else:
                finished[task] = _evaluate_task(prepared, options, task, length, resources, prompting, tracker)
            finished = _ordered(finished)
            entry = {"tasks": finished, "average": _average(finished)}
            tracker.finished(key, entry)
        results[key] = entry
    return results


def _evaluate_task(
    prepared: PreparedModel,
    options: RulerOptions,
    task: str,
    length: int,
    resources: Resources,
    prompting: Prompting,
    tracker: Tracker,
) -> dict[str, Any]:
    spec = SPECS[task]
    max_new_tokens = options.max_new_tokens or spec.max_new_tokens
    began = time.perf_counter()
    samples: list[dict[str, Any]] = [{} for _ in range(options.samples)]  # in sample order, whatever the batches
    prompts = sample_prompts(prepared.tokenizer, task, length, options, resources, prompting, max_new_tokens)
    for batch in equal_length_batches(prompts, options.batch_size, lambda item: len(item[2].ids)):
        outputs = generate_batch(prepared, [prompt.ids for _, _, prompt in batch], max_new_tokens)
        for (index, sample, prompt), output in zip(batch, outputs, strict=True):
            samples[index] = {
                "expected": list(sample.expected),
                "output": output.strip(),
                "score": score(spec.metric, output, sample.expected),
                "prompt_tokens": len(prompt.ids),
            }
            tracker.advance(f"ruler {task} @ {format_length(length)}")
    result: dict[str, Any] = {
        "score": sum(s["score"] for s in samples) / len(samples),
        "metric": spec.metric,
        "max_new_tokens": max_new_tokens,
        "seconds": round(time.perf_counter() - began, 3),
        "samples": samples,
    }
    if spec.niah is not None and spec.niah.haystack == "essay":
        result["haystack"] = resources.essay.name
    if task in resources.qa:
        data = resources.qa[task]
        result["data"] = {"path": data.path, "sha256": data.sha256}
    return result


@dataclass(frozen=True)
class Prompting:
    """How every prompt of a run starts and ends, besides the sample's own text."""

    prefix: list[int]
    """Special tokens put before the text (the tokenizer's BOS; none under a chat template)."""
    wrap: ChatWrap | None = None
    """The chat template around the task's prompt, or None."""


def sample_prompts(
    tokenizer: Any,
    task: str,
    length: int,
    options: RulerOptions,
    resources: Resources,
    prompting: Prompting,
    new_tokens: int,
) -> Iterator[tuple[int, TaskSample, Prompt]]:
    """Each sample of ``task`` at ``length`` with its prompt, in sample order, each leaving room for ``new_tokens``
    generated tokens; each fit starts from the previous sample's unit count. Made as the batches need them, so
    only a few prompts are held at a time."""
    hint = None
    for index in range(options.samples):
        sample = make_sample(task, options.seed, length, index, resources)
        if prompting.wrap is not None:
            sample = sample.in_chat(prompting.wrap.opening, prompting.wrap.closing)
        prompt = build_prompt(tokenizer, sample, length, prompting.prefix, hint, new_tokens)
        hint = prompt.units
        yield index, sample, prompt


def options_from_command_line(
    lengths: tuple[int, ...],
    *,
    ruler_tasks: str = "all",
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    haystack_corpus: str | None = None,
    qa_data: Sequence[Path] | None = None,
    batch_size: int = 1,
    max_new_tokens: int | None = None,
    chat_template: bool | None = None,
    **_other_tasks: Any,
) -> RulerOptions:
    """RulerOptions from command-line values; unreadable QA files or corpora fail before any model loads.
    ``chat_template`` None: decided by the tokenizer once the model is loaded (`resolve_chat_template`)."""
    from ropext.data.corpus import open_corpus

    options = RulerOptions(
        lengths=lengths,
        samples=samples,
        seed=seed,
        haystack_corpus=haystack_corpus,
        max_new_tokens=max_new_tokens,
        chat_template=chat_template,
        tasks=ruler_tasks,
        qa_data=tuple(str(path) for path in qa_data or ()),
        batch_size=batch_size,
    )
    load_qa_data(options.qa_data)
    if haystack_corpus not in (None, NOISE_HAYSTACK):
        open_corpus(haystack_corpus)
    return options


def score_rows(document: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The document with each length's result flattened to ``{"average", task: score}`` for the table."""
    present = {task for result in document["results"].values() for task in result.get("tasks", {})}
    columns = ("average", *(task for task in ALL_TASKS if task in present))
    rows = {
        length: {"average": result.get("average")}
        | {task: entry.get("score") for task, entry in result.get("tasks", {}).items()}
        for length, result in document["results"].items()
    }
    return {**document, "results": rows}, columns


TASK = Task(
    name="ruler",
    run=evaluate_ruler,
    options=options_from_command_line,
    rows=score_rows,
    unit="prompt",
    check_result_file=refuse_other_prompts,
    settle=resolve_chat_template,
)
