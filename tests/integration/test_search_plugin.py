"""A searcher from a third-party package (the ``ropext.plugins`` entry-point group) runs through
``ropext search`` with the facts it gives about itself, and nothing else in ropext names it."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_support import CorpusFiles, assert_clean_error, assert_ok, run_cli

from ropext import registry
from ropext.methods import METHODS
from ropext.model.loading import load_layout
from ropext.scaling import RopeScaling
from ropext.search import SEARCHERS

TARGET = 1024

# A toy package: every seed vector with every n̂ it allows, best kept. Its facts differ from every
# built-in searcher's: a numeric default attention, NTK as its only seed, n̂ from (0, 3).
PLUGIN_SOURCE = '''
from dataclasses import asdict, dataclass

from ropext.search import SEARCHERS
from ropext.search.base import Candidate, SearchResult, best_of


@dataclass(frozen=True)
class SweepParams:
    repeat: int = 1


class Sweep:
    name = "sweep"
    params = SweepParams
    default_attention = "1.25"
    start_token_choices = (0, 3)

    def seed_methods(self, params):
        return ("ntk",)

    def batch_hint(self, params):
        return 2

    def expected_evaluations(self, space, params):
        return len(space.initial) * len(space.start_tokens_choices)

    def run(self, objective, space, params, seed, on_step=None):
        candidates = [Candidate(v, n) for v in space.initial for n in space.start_tokens_choices]
        best, score = best_of(candidates, objective(candidates))
        return SearchResult(best, score, len(candidates), [score], asdict(params))


class Incomplete:
    """Written against the protocol before searchers named their seeds."""

    name = "incomplete"
    params = SweepParams
    default_attention = "none"
    start_token_choices = (0,)


def register():
    SEARCHERS.register("sweep", Sweep(), "every seed vector with every n-hat")
    SEARCHERS.register("incomplete", "toy_search_plugin:_INCOMPLETE", "a searcher that leaves out a fact")


_INCOMPLETE = Incomplete()
'''


@pytest.fixture
def plugin_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The toy package installed on sys.path with its entry point; the registries restored afterwards."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "toy_search_plugin.py").write_text(PLUGIN_SOURCE)
    info = site / "toy_search_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-search-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent("""\
        [ropext.plugins]
        toy = toy_search_plugin:register
        """)
    )
    monkeypatch.syspath_prepend(str(site))
    for name in ("_entries", "_alias_of", "_loaded"):
        monkeypatch.setattr(SEARCHERS, name, dict(getattr(SEARCHERS, name)))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    yield
    sys.modules.pop("toy_search_plugin", None)


def test_plugin_searcher_runs_end_to_end_with_its_own_facts(
    plugin_installed: None, tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    out = tmp_path / "sweep.yaml"
    result = run_cli(
        "search", "--model", tiny_model, "--method", "sweep", "-t", str(TARGET), "--corpus", corpus_files.folder,
        "--samples", "2", "--out", out,
    )  # fmt: skip
    assert_ok(result)
    scaling = RopeScaling.load(out)
    _, layout = load_layout(str(tiny_model))
    ntk = METHODS.get("ntk")
    ntk_factors = list(ntk.run(layout, TARGET, ntk.params()).factors)
    # Its default attention, not the "none" an unknown searcher used to get.
    assert scaling.method == "sweep"
    assert scaling.attention_factor == 1.25 and scaling.provenance["attention"] == "1.25"
    # Its seeds (NTK only) and its n̂ choices: 1 vector × 2 n̂ = 2 evaluations.
    assert scaling.provenance["evaluations"] == 2
    assert list(scaling.factors) == ntk_factors
    records = [json.loads(line) for line in out.with_name(out.name + ".journal.jsonl").read_text().splitlines()[1:]]
    assert sorted(r["start_tokens"] for r in records) == [0, 3]
    assert all(r["factors"] == ntk_factors for r in records)
    assert scaling.start_tokens in (0, 3)
    assert scaling.provenance["score"] == min(r["score"] for r in records)


def test_plugin_searcher_without_its_facts_is_one_clear_error(
    plugin_installed: None, tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    out = tmp_path / "incomplete.yaml"
    result = run_cli(
        "search", "--model", tiny_model, "--method", "incomplete", "-t", str(TARGET),
        "--corpus", corpus_files.folder, "--samples", "2", "--out", out,
    )  # fmt: skip
    assert_clean_error(result, "searcher 'incomplete'", "seed_methods")
    assert not out.exists()
    assert not out.with_name(out.name + ".journal.jsonl").exists()
