"""bench/finetune_quality.py's pass-through of ``ropext finetune --practice`` (nothing is trained here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("practice", [None, "multi-query, multi-value"])
def test_practice_reaches_only_the_modes_with_retrieval_practice(
    practice: str | None, load_bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quality = load_bench("finetune_quality")
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(quality, "_finetune", lambda args, path, length, out, longest, extra: calls.append(
        (out.name, extra)))  # fmt: skip
    monkeypatch.setattr(quality, "_target", lambda path: "65536")
    argv = ["finetune_quality.py", "--corpus", "books.jsonl", "--factors", "yarn=yarn.yaml", "--train-lengths", "8k",
            "--modes", "pose,pose-needles", "--train-only", "--out-dir", str(tmp_path)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv + (["--practice", practice] if practice else []))
    quality.main()
    pose = ("yarn-ft8k-pose", ["--position-skip", "65536", "--short-share", "0", "--needle-share", "0"])
    needles = ["--position-skip", "65536", "--short-share", "0", "--needle-share", "0.25"]
    if practice is None:  # finetune's own default: the option is not passed
        assert calls == [pose, ("yarn-ft8k-pose-needles", needles)]
    else:  # a folder of its own, so runs of other kinds sit side by side
        kinds = ["--practice", "multi-query,multi-value"]
        assert calls == [pose, ("yarn-ft8k-pose-needles-multi-query+multi-value", needles + kinds)]
