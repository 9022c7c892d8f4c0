"""`ropext search --keep-short-context`: inputs up to the original context run exactly as the original model,
in ropext and in plain transformers after export; the long factors are unchanged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from integration_support import ORIGINAL_CONTEXT, CorpusFiles, assert_clean_error, assert_ok, run_cli
from transformers import AutoModelForCausalLM

from ropext.model.apply import apply_scaling
from ropext.model.prepared import prepare_model
from ropext.scaling import RopeScaling

TARGET = "1k"


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_a_closed_form_method_keeps_the_original_short_context_after_export(
    tiny_model: Path, pristine, tmp_path: Path
) -> None:
    plain, kept = tmp_path / "yarn.yaml", tmp_path / "yarn-kept.yaml"
    assert_ok(run_cli("search", "--model", tiny_model, "--method", "yarn", "-t", TARGET, "--out", plain))
    assert_ok(
        run_cli(
            "search", "--model", tiny_model, "--method", "yarn", "-t", TARGET, "--keep-short-context", "--out", kept
        )
    )
    yarn, scaling = RopeScaling.load(plain), RopeScaling.load(kept)
    assert scaling.factors == yarn.factors and yarn.attention_factor > 1
    assert scaling.short_factors == (1.0,) * len(yarn.factors) and scaling.attention_factor == 1.0
    assert scaling.provenance["short_context"].startswith("original")

    exported = tmp_path / "exported"
    assert_ok(run_cli("export", "--model", tiny_model, "--factors", kept, "--out", exported))
    loaded = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32, attn_implementation="sdpa").eval()
    # progress lines and tables name what a checkpoint's own config runs, not "original"
    assert prepare_model(str(exported), None, device="cpu").label == "its config's longrope"
    assert prepare_model(str(tiny_model), None, device="cpu").label == "original"
    generator = torch.Generator().manual_seed(0)
    short = torch.randint(0, pristine.config.vocab_size, (1, ORIGINAL_CONTEXT), generator=generator)
    long = torch.randint(0, pristine.config.vocab_size, (1, 2 * ORIGINAL_CONTEXT), generator=generator)
    # within the original context: the original model, exactly as transformers runs it
    torch.testing.assert_close(_logits(loaded, short), _logits(pristine, short), rtol=0, atol=1e-5)
    applied = apply_scaling(
        AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation="sdpa").eval(),
        scaling,
    )
    torch.testing.assert_close(_logits(applied, short), _logits(pristine, short), rtol=0, atol=1e-5)
    # beyond it: the long factors (without the attention factor), not the original model
    assert not torch.allclose(_logits(loaded, long), _logits(pristine, long), atol=1e-3)
    torch.testing.assert_close(_logits(loaded, long), _logits(applied, long), rtol=0, atol=1e-4)


def test_a_searcher_searches_the_long_factors_with_attention_factor_one(
    tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    out = tmp_path / "dcis.yaml"
    arguments = ["search", "--model", tiny_model, "--method", "dcis", "-t", TARGET, "--corpus", corpus_files.folder]
    arguments += ["--samples", "2", "--param", "candidates=1", "--budget", "4", "--keep-short-context", "--out", out]
    assert_ok(run_cli(*arguments))
    scaling = RopeScaling.load(out)
    assert scaling.attention_factor == 1.0 and scaling.short_factors == (1.0,) * len(scaling.factors)
    assert any(f != 1.0 for f in scaling.factors)
    assert '"attention_factor": 1.0' in out.with_name(out.name + ".journal.jsonl").read_text().splitlines()[0]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (("--method", "yarn", "--attention-factor", "yarn"), "--keep-short-context needs attention factor 1"),
        (("--method", "dcis", "--short-length", "256"), "give one of them"),
        (
            (
                "--method",
                "dynamic",
            ),
            "already runs the original frequencies",
        ),
    ],
)
def test_contradicting_options_are_one_clear_error(
    tiny_model: Path, tmp_path: Path, extra: tuple[str, ...], fragment: str
) -> None:
    out = tmp_path / "f.yaml"
    result = run_cli("search", "--model", tiny_model, "-t", TARGET, "--keep-short-context", *extra, "--out", out)
    assert_clean_error(result, fragment)
    assert not out.exists()


def test_attention_factor_search_varies_it_from_the_searchers_default(
    tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    out = tmp_path / "dcis.yaml"
    arguments = ["search", "--model", tiny_model, "--method", "dcis", "-t", TARGET, "--corpus", corpus_files.folder]
    arguments += ["--samples", "2", "--param", "candidates=2", "--param", "levels=1", "--attention-factor", "search"]
    assert_ok(run_cli(*arguments, "--out", out))
    scaling = RopeScaling.load(out)
    start = scaling.provenance["attention_searched_from"]
    assert scaling.provenance["attention"] == "search" and start == pytest.approx(1 + 0.1 * math.log(4))
    lines = out.with_name(out.name + ".journal.jsonl").read_text().splitlines()
    tried = {json.loads(line)["attention_factor"] for line in lines[1:]}
    assert start in tried and len(tried) == 1 + 2 * 2  # the start, then k values before and k after the level
    assert scaling.attention_factor in tried
    # the start, k attention values, k per segment of level 1 (2 segments), k attention values; a proposal
    # clipped onto one already scored is not scored again
    assert scaling.provenance["evaluations"] == len(lines) - 1 <= 1 + 2 * (1 + 2 + 1)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (("--method", "longrope", "--attention-factor", "search"), "cannot vary it; use dcis"),
        (("--method", "dcis", "--attention-factor", "search", "--keep-short-context"), "needs attention factor 1"),
    ],
)
def test_attention_search_refusals(
    tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path, extra: tuple[str, ...], fragment: str
) -> None:
    out = tmp_path / "f.yaml"
    result = run_cli(
        "search", "--model", tiny_model, "-t", TARGET, "--corpus", corpus_files.folder, *extra, "--out", out
    )
    assert_clean_error(result, fragment)
    assert not out.exists()
