"""Options of the evaluation tasks, defined once for a task's own command (``ropext eval ppl``) and for
``ropext eval run``, where the same option's help starts with the task's name (``ppl: at most this many
documents.``) since one command carries the options of every task."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def _for_run(task: str, text: str) -> str:
    # "At most…" reads "ppl: at most…"; a word in capitals (SQuAD) keeps them.
    first = text[0].lower() if text[1:2].islower() else text[0]
    return f"{task}: {first}{text[1:]}"


def _both(task: str, kind: Any, text: str, *names: str, run_kind: Any = None, **option: Any) -> tuple[Any, Any]:
    """The option for the task's own command, and for ``eval run`` (where it may be optional: ``run_kind``)."""
    own = Annotated[kind, typer.Option(*names, help=text, **option)]
    run = Annotated[run_kind or kind, typer.Option(*names, help=_for_run(task, text), **option)]
    return own, run


CorpusOption, RunCorpusOption = _both(
    "ppl", str | None, "Files/folder (.txt .jsonl[.gz] .parquet), hub dataset, or python-stdlib (the default)."
)
MaxDocsOption, RunMaxDocsOption = _both("ppl", int, "At most this many documents.", min=1)
SkipDocsOption, RunSkipDocsOption = _both("ppl", int, "Skip this many long-enough documents first.", min=0)
ModeOption, RunModeOption = _both("ppl", str, "truncate (first L tokens per document) or sliding.")
StrideOption, RunStrideOption = _both("ppl", str | None, "Sliding mode: tokens between windows, e.g. 4k (default L/2).")
ChunkTokensOption, RunChunkTokensOption = _both("ppl", int, "Positions per chunk of the loss.", min=1)

DepthsOption, RunDepthsOption = _both(
    "passkey", str, "spread (every prompt at its own depth) or comma-separated depths in [0, 1]."
)
TrialsOption, RunTrialsOption = _both(
    "passkey", int, "Prompts per length (spread) or per length and depth (fixed depths).", min=1
)

SamplesOption, RunSamplesOption = _both("ruler", int, "Prompts per task and length.", min=1)
HaystackCorpusOption, RunHaystackCorpusOption = _both(
    "ruler",
    str | None,
    "Essay text for the essay-haystack NIAH tasks, as --corpus, or noise (default: prose shipped with ropext).",
)
QaDataOption, RunQaDataOption = _both(
    "ruler", list[Path] | None, "SQuAD-style JSON (enables qa_1) and/or HotpotQA-style JSON (qa_2); repeatable."
)
BatchSizeOption, RunBatchSizeOption = _both(
    "ruler", int, "Prompts generated together (all of one length, so none is padded).", min=1
)
MaxNewTokensOption, RunMaxNewTokensOption = _both(
    "ruler", int | None, "Tokens generated per answer for every task (default: RULER's per task).", min=1
)
ChatTemplateOption, RunChatTemplateOption = _both(
    "ruler",
    bool | None,
    "Wrap prompts in the tokenizer's chat template, as RULER does (default: when it has one).",
    "--chat-template/--no-chat-template",
)
