"""Constants and helpers shared by the integration tests: the fixtures' dimensions, running the CLI,
deterministic text. (conftest.py builds the fixtures; test modules import from here, since a module
named ``conftest`` exists in every test folder. The distinctive name avoids clashes on ``sys.path``.)
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TINY_VOCAB = 512
"""BPE vocabulary (incl. specials): large enough that a passkey prompt fits in 128 tokens."""
ORIGINAL_CONTEXT = 256
HEAD_DIM = 16
ROPE_THETA = 10000.0
SPECIAL_TOKENS = ("<s>", "</s>")
DOCUMENT_WORDS = (60, 1300, 1500, 1700, 1400)
"""Words per corpus document: the first is short (about 110 tokens), the rest are 2000+ tokens long."""


@dataclass(frozen=True)
class CorpusFiles:
    folder: Path
    """One .txt file per document (doc_00.txt, doc_01.txt, ... in corpus order)."""
    jsonl: Path
    """The same documents as ``{"id": i, "text": ...}`` records (alone in its folder)."""
    jsonl_gz: Path
    """The same records gzipped (alone in its folder)."""
    texts: tuple[str, ...]


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "shi", "po", "ve", "den", "gar", "fo", "lu", "zen", "bri", "ol")


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def last_stderr_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def run_cli(*args: str | Path) -> CliResult:
    """``ropext ARGS`` in this process (no interpreter start-up): the console entry point, output captured."""
    from ropext.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    saved_argv = sys.argv
    sys.argv = ["ropext", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = saved_argv
    return CliResult(code, stdout.getvalue(), stderr.getvalue())


def run_cli_subprocess(*args: str | Path, timeout: float = 300) -> CliResult:
    """``python -m ropext ARGS`` in a fresh interpreter, with this process's environment (cache dir included)."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "ropext", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)


def assert_ok(result: CliResult) -> None:
    assert result.code == 0, str(result)


def assert_clean_error(result: CliResult, *fragments: str) -> None:
    """Exit status 2, one ``error: ...`` line last, no traceback, and the message names the problem."""
    assert result.code == 2, str(result)
    assert "Traceback" not in result.stderr, str(result)
    assert result.last_stderr_line.startswith("error: "), str(result)
    for fragment in fragments:
        assert fragment in result.last_stderr_line, f"{fragment!r} not in {result.last_stderr_line!r}"


def pseudo_words(seed: int, count: int = 300) -> list[str]:
    rng = random.Random(seed)
    return sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(count)})


def pseudo_text(seed: int, words: int) -> str:
    """Deterministic sentences of made-up words (about 1.8 tokens per word with the tiny tokenizer)."""
    rng = random.Random(seed)
    vocabulary = pseudo_words(0)
    sentences, remaining = [], words
    while remaining > 0:
        size = min(remaining, rng.randint(4, 14))
        sentence = " ".join(rng.choice(vocabulary) for _ in range(size))
        sentences.append(sentence.capitalize() + ".")
        remaining -= size
    paragraphs = [" ".join(sentences[i : i + 6]) for i in range(0, len(sentences), 6)]
    return "\n\n".join(paragraphs)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def assert_close(actual: float, expected: float, rel: float = 1e-4) -> None:
    assert math.isclose(actual, expected, rel_tol=rel), f"{actual} != {expected} (rel {rel})"
