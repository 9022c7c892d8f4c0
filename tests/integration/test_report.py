"""`ropext report`: the page and its plots from the committed benchmark results and a tiny RULER run; bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from integration_support import PNG_MAGIC, CliResult, assert_clean_error, assert_ok, read_json, run_cli

from ropext.report import build_sections, label_key, load_results, method_labels

BENCH = Path(__file__).parents[2] / "bench" / "results"
METHODS = BENCH / "methods-h100"
METHOD_FILES = sorted(METHODS.glob("ppl-*.json")) + sorted(METHODS.glob("passkey-*.json"))
SEARCH_32K = BENCH / "search-h100" / "eval-32k"
FINETUNE = BENCH / "finetune-quality-h100"
RULER_LENGTH = 1024
RULER_TASKS = ("niah_single_1", "vt")


def _ruler(model: Path, json_out: Path, *scaling: str) -> dict[str, Any]:
    result = run_cli(
        "eval", "ruler", "--model", model, "--tasks", ",".join(RULER_TASKS), "--lengths", str(RULER_LENGTH),
        "--samples", "1", "--max-new-tokens", "8", "--device", "cpu", "--json", json_out, *scaling,
    )  # fmt: skip
    assert_ok(result)
    return read_json(json_out)


@pytest.fixture(scope="module")
def ruler_files(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """RULER on the tiny model as it is, and rescaled by YaRN to 1k (4 × its context)."""
    folder = tmp_path_factory.mktemp("ruler-results")
    _ruler(tiny_model, folder / "ruler-original.json")
    _ruler(tiny_model, folder / "ruler-yarn.json", "--method", "yarn", "-t", "1k")
    return [folder / "ruler-original.json", folder / "ruler-yarn.json"]


@pytest.fixture(scope="module")
def report(ruler_files: list[Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CliResult]:
    out = tmp_path_factory.mktemp("report") / "page"
    result = run_cli("report", *METHOD_FILES, *ruler_files, "--out", out, "--title", "Test report")
    assert_ok(result)
    return out, result


def _page(report: tuple[Path, CliResult]) -> str:
    return (report[0] / "report.md").read_text()


def _table_row(page: str, label: str, after: str) -> str:
    """The first table row of ``label`` after the heading line containing ``after``."""
    section = page[page.index(after) :]
    match = re.search(rf"^\| {re.escape(label)} \|.*$", section, flags=re.MULTILINE)
    assert match, f"no row {label!r} after {after!r}"
    return match.group()


def test_page_mentions_every_method_and_source(report: tuple[Path, CliResult]) -> None:
    page = _page(report)
    assert page.startswith("# Test report\n")
    for label in ("none", "pi", "ntk", "yarn", "dprope:t=0", "dprope:t=0.001", "original"):
        assert f"| {label} |" in page, label
    for heading in ("## Perplexity — smollm2-135m", "## Passkey retrieval — smollm2-135m", "## RULER — "):
        assert heading in page
    sources = page[page.index("## Sources") :]
    for path in METHOD_FILES:
        assert str(path) in sources
    assert "NVIDIA H100 80GB HBM3" in sources and "| cpu |" in sources
    assert "wrote " in report[1].stdout


def test_tables_hold_the_numbers_of_the_files(report: tuple[Path, CliResult]) -> None:
    page = _page(report)
    yarn = read_json(METHODS / "ppl-yarn-64k.json")["results"]
    row = _table_row(page, "yarn", "## Perplexity")
    assert [cell.strip("* ") for cell in row.strip("|").split("|")[1:]] == [
        f"{yarn[k]['ppl']:.3f}" for k in ("8192", "16384", "32768", "65536")
    ]
    ntk = read_json(METHODS / "passkey-ntk-64k.json")["results"]
    row = _table_row(page, "ntk", "## Passkey")
    assert [cell.strip("* ") for cell in row.strip("|").split("|")[1:]] == [
        f"{ntk[k]['accuracy']:.2f}" for k in ("8192", "16384", "32768", "65536")
    ]


def test_ruler_table_has_each_task_and_the_average(report: tuple[Path, CliResult], ruler_files: list[Path]) -> None:
    page = _page(report)
    ruler = page[page.index("## RULER") :]
    assert "| method | length | average | niah_single_1 | vt |" in ruler
    for label, path in zip(("original", "yarn"), ruler_files, strict=True):
        result = read_json(path)["results"][str(RULER_LENGTH)]
        scores = [f"{result['tasks'][t]['score']:.3f}" for t in RULER_TASKS]
        expected = f"| {label} | 1k | {result['average']:.3f} | " + " | ".join(scores) + " |"
        assert expected in ruler


def test_every_plot_is_linked_and_is_a_real_png(report: tuple[Path, CliResult]) -> None:
    out, _ = report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", _page(report))
    assert {Path(link).name.split("-")[0] for link in links} == {"factors", "ppl", "passkey", "ruler"}
    assert len(links) == 5  # factors of each model, ppl, passkey, ruler
    assert sorted(links) == sorted(p.name for p in out.glob("*.png"))
    for link in links:
        assert "/" not in link  # relative to the page: beside it
        data = (out / link).read_bytes()
        assert data.startswith(PNG_MAGIC), link
        assert len(data) > 10_000, f"{link}: {len(data)} bytes"


def test_labels_tell_the_same_method_at_two_targets_apart() -> None:
    files = [METHODS / "ppl-yarn-64k.json", BENCH / "search-h100/eval-32k/ppl-yarn-32k.json"]
    files += [METHODS / "ppl-dprope-64k.json", METHODS / "ppl-dprope_t_0.001-64k.json"]
    files += [BENCH / "search-h100/eval-32k/ppl-none-32k.json", BENCH / "search-h100/eval-64k/ppl-none-64k.json"]
    docs, _ = load_results(files)
    assert sorted(set(method_labels(docs).values())) == ["dprope:t=0", "dprope:t=0.001", "none", "yarn@32k", "yarn@64k"]


def test_comparison_summary_in_a_glob_is_skipped(tmp_path: Path) -> None:
    result = run_cli("report", METHODS / "summary.json", METHODS / "ppl-pi-64k.json", "--out", tmp_path)
    assert_ok(result)
    assert "skipped 1" in result.stdout
    page = (tmp_path / "report.md").read_text()
    assert "summary.json" in page[page.index("Skipped") :]


def test_a_summary_marked_as_one_is_skipped_whatever_its_shape(tmp_path: Path) -> None:
    """`bench/eval_methods.py` marks its summary with a kind; the report goes by that, not by the numbers' layout."""
    from ropext.results import comparison_summary

    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps(comparison_summary({"pi": {"ppl": {"65536": {"ppl": 12.0}}}, "host": "h100"})))
    result = run_cli("report", summary, METHODS / "ppl-pi-64k.json", "--out", tmp_path / "out")
    assert_ok(result)
    assert "skipped 1" in result.stdout
    page = (tmp_path / "out" / "report.md").read_text()
    assert f"`{summary}`" in page[page.index("Skipped") :]


def _bad(tmp_path: Path, name: str, content: str | None) -> Path:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    return path


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.json", None, "does not exist"),
        ("notes.txt", "just text", "is not a ropext result file"),
        ("other.json", json.dumps({"loss": 1.0}), "is not a ropext result file"),
        ("list.json", "[1, 2]", "is not a ropext result file"),
        (
            "task.json",
            json.dumps({"task": "mmlu", "model": "m", "scaling": None, "options": {}, "results": {}}),
            "mmlu",
        ),
    ],
)
def test_bad_input_is_one_error_line(tmp_path: Path, name: str, content: str | None, message: str) -> None:
    result = run_cli("report", METHODS / "ppl-pi-64k.json", _bad(tmp_path, name, content), "--out", tmp_path / "out")
    assert_clean_error(result, message, name)
    assert len([line for line in result.stderr.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "out" / "report.md").exists()


def test_a_scaling_yaml_is_not_a_result_file(tmp_path: Path) -> None:
    result = run_cli("report", BENCH / "search-h100/dcis-32k.yaml", "--out", tmp_path)
    assert_clean_error(result, "is not a ropext result file")


def test_no_files_or_a_file_as_out_is_one_error_line(tmp_path: Path) -> None:
    assert_clean_error(run_cli("report", "--out", tmp_path / "out"), "no result files given")
    (tmp_path / "taken").write_text("")
    result = run_cli("report", METHODS / "ppl-pi-64k.json", "--out", tmp_path / "taken")
    assert_clean_error(result, "is a file")


def test_files_of_one_series_merge_and_disagreements_are_noted(tmp_path: Path, ruler_files: list[Path]) -> None:
    changed = read_json(METHODS / "ppl-yarn-64k.json")
    changed["results"]["8192"]["ppl"] *= 2
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    ruler = read_json(ruler_files[0])
    halves = []
    for task in RULER_TASKS:  # the same run split in two files, one task each
        part = json.loads(json.dumps(ruler))
        part["results"][str(RULER_LENGTH)]["tasks"] = {task: ruler["results"][str(RULER_LENGTH)]["tasks"][task]}
        halves.append(tmp_path / f"ruler-{task}.json")
        halves[-1].write_text(json.dumps(part))
    out = tmp_path / "out"
    assert_ok(run_cli("report", METHODS / "ppl-yarn-64k.json", tmp_path / "changed.json", *halves, "--out", out))
    page = (out / "report.md").read_text()
    assert "- note: yarn: " in page and "changed.json disagrees with an earlier file at 8k (" in page
    result = ruler["results"][str(RULER_LENGTH)]
    scores = " | ".join(f"{result['tasks'][t]['score']:.3f}" for t in RULER_TASKS)
    assert f"| original | 1k | {result['average']:.3f} | {scores} |" in page


# ---------------------------------------------------------------------------------------------- grouping
def _variant(tmp_path: Path, source: Path, name: str, **changes: Any) -> Path:
    """A copy of ``source`` with top-level keys changed (``options`` is updated, not replaced)."""
    data = read_json(source)
    data["options"] |= changes.pop("options", {})
    data |= changes
    (tmp_path / name).write_text(json.dumps(data))
    return tmp_path / name


def _sections(*paths: Path) -> list:
    docs, _ = load_results(paths)
    return build_sections(docs, method_labels(docs))


def test_one_corpus_fingerprint_under_two_paths_is_one_section(tmp_path: Path) -> None:
    moved = _variant(tmp_path, SEARCH_32K / "ppl-pi-32k.json", "moved.json", options={"corpus": "/elsewhere/b.jsonl"})
    sections = _sections(SEARCH_32K / "ppl-yarn-32k.json", moved)
    assert len(sections) == 1
    assert sections[0].corpora == [".device/data/books-dev.jsonl.gz", "/elsewhere/b.jsonl"]
    assert sorted(sections[0].series) == ["pi", "yarn"]
    out = tmp_path / "out"
    assert_ok(run_cli("report", SEARCH_32K / "ppl-yarn-32k.json", moved, "--out", out))
    page = (out / "report.md").read_text()
    assert "corpus `.device/data/books-dev.jsonl.gz` / `/elsewhere/b.jsonl`" in page
    assert "same corpus fingerprint" in page


def test_another_fingerprint_is_another_corpus_unless_a_series_measures_the_same(tmp_path: Path) -> None:
    changed = read_json(SEARCH_32K / "ppl-pi-32k.json")
    for result in changed["results"].values():
        result["corpus_fingerprint"] = "0123456789abcdef"
    (tmp_path / "other.json").write_text(json.dumps(changed))
    assert len(_sections(SEARCH_32K / "ppl-yarn-32k.json", tmp_path / "other.json")) == 2
    # The committed files: the fine-tune bench read the corpus from /root/data, the search from .device/data
    # (other fingerprints); longrope@32k measured on both gives the same numbers, so they are one corpus.
    untuned = FINETUNE / "longrope-32k__no_fine-tune" / "ppl.json"
    sections = _sections(SEARCH_32K / "ppl-longrope-32k-32k.json", SEARCH_32K / "ppl-pi-32k.json", untuned)
    assert len(sections) == 1
    assert sections[0].corpora == [".device/data/books-dev.jsonl.gz", "/root/data/books-dev.jsonl.gz"]
    assert sections[0].corpus_note and "longrope at 8k, 16k, 32k, 64k" in sections[0].corpus_note
    # The same files with one log-likelihood changed: nothing shows the corpora are one.
    differs = read_json(untuned)
    for result in differs["results"].values():
        result["nll"] *= 1.01
    (tmp_path / "differs.json").write_text(json.dumps(differs))
    assert len(_sections(SEARCH_32K / "ppl-longrope-32k-32k.json", tmp_path / "differs.json")) == 2


def test_passkey_results_of_one_options_share_a_section_and_other_options_do_not(tmp_path: Path) -> None:
    trials = _variant(tmp_path, SEARCH_32K / "passkey-pi-32k.json", "trials.json", options={"trials": 8})
    sections = _sections(SEARCH_32K / "passkey-yarn-32k.json", FINETUNE / "yarn-32k__fine-tuned_at_8k/passkey.json")
    assert len(sections) == 1
    sections = _sections(SEARCH_32K / "passkey-yarn-32k.json", trials)
    assert [s.distinct_options for s in sections] == [{"trials": "4"}, {"trials": "8"}]


def test_models_measured_alike_share_a_section_with_labels_naming_the_model(tmp_path: Path) -> None:
    scaled = _variant(tmp_path, SEARCH_32K / "ppl-yarn-32k.json", "scaled.json", model="/ckpt/other")
    files = [SEARCH_32K / f"ppl-{name}.json" for name in ("none-32k", "yarn-32k", "longrope-32k-32k")]
    # The untuned run of the fine-tune bench shows its corpus path holds the search's corpus (see above).
    files += [
        FINETUNE / "longrope-32k__no_fine-tune" / "ppl.json",
        FINETUNE / "longrope-32k__fine-tuned_at_8k" / "ppl.json",
    ]
    files.append(scaled)
    sections = _sections(*files)
    assert len(sections) == 1
    section = sections[0]
    assert section.models == ["smollm2-135m", "/root/fq/longrope-32k-ft8k", "/ckpt/other"]
    # The main model's rows as in a section of its own; the others name their model.
    assert sorted(section.series) == ["longrope", "longrope-32k-ft8k", "none", "yarn", "yarn · other"]
    assert section.series["longrope-32k-ft8k"].key == ("/root/fq/longrope-32k-ft8k", "original")
    out = tmp_path / "out"
    assert_ok(run_cli("report", *files, "--out", out))
    page = (out / "report.md").read_text()
    assert "## Perplexity — smollm2-135m and 2 other models" in page
    ppl = page[page.index("## Perplexity") : page.index("## Sources")]
    assert "| method · model | 8k | 16k | 32k | 64k |" in ppl
    rows = [row.split("|")[1].strip() for row in ppl.splitlines() if row.startswith("| ") and "---" not in row]
    assert rows[1:] == ["none", "yarn", "longrope", "longrope-32k-ft8k", "yarn · other"]
    tuned = read_json(FINETUNE / "longrope-32k__fine-tuned_at_8k" / "ppl.json")["results"]["8192"]["ppl"]
    assert f"| longrope-32k-ft8k | **{tuned:.3f}** |" in ppl
    assert len(list(out.glob("ppl-*.png"))) == 1


def test_a_section_of_one_model_keeps_the_models_labels() -> None:
    docs, _ = load_results(METHOD_FILES)
    labels = method_labels(docs)
    for section in build_sections(docs, labels):
        assert section.models == ["smollm2-135m"]
        assert {label: s.key for label, s in section.series.items()} == {
            labels[label_key(doc)]: label_key(doc) for doc in docs if doc.task == section.task
        }


def test_ruler_average_counts_only_the_tasks_that_have_a_score() -> None:
    # The committed CPU run lists qa_1/qa_2 as unavailable (no question data): 13 tasks, 11 of them scored.
    from ropext.report.tables import ruler_tasks, scored_task_count

    docs, _ = load_results(sorted((BENCH / "ruler-cpu").glob("ruler-*.json")))
    (section,) = [s for s in build_sections(docs, method_labels(docs)) if s.task == "ruler"]
    assert len(ruler_tasks(section)) == 13
    assert scored_task_count(section) == 11


def test_an_unfinished_ruler_length_is_marked_in_the_table_and_left_out_of_the_plot(tmp_path: Path) -> None:
    # The committed H200 YaRN run with five of its eleven 64k tasks taken out, as a run stopped inside 64k
    # leaves it (the first run of this matrix did).
    from ropext.report.plots import ruler_plot_points
    from ropext.report.tables import ruler_table

    document = json.loads((BENCH / "ruler-h200" / "ruler-yarn-64k.json").read_text())
    tasks = document["results"]["65536"]["tasks"]
    for name in ("niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe"):
        del tasks[name]
    unfinished = tmp_path / "ruler-yarn-64k.json"
    unfinished.write_text(json.dumps(document))
    others = [BENCH / "ruler-h200" / f"ruler-{name}.json" for name in ("original", "dcis-64k")]
    docs, _ = load_results([unfinished, *others])
    labels = method_labels(docs)
    (section,) = [s for s in build_sections(docs, labels) if s.task == "ruler"]
    order = list(section.series)
    table = ruler_table(section, order)
    yarn = next(label for label in order if label.startswith("yarn"))
    row_64k = next(line for line in table.splitlines() if line.startswith(f"| {yarn} | 64k |"))
    assert "(6 of 11)" in row_64k
    assert [length for length, _ in ruler_plot_points(section, yarn)] == [4096, 8192, 16384, 32768]
    dcis = next(label for label in order if label.startswith("dcis"))
    assert [length for length, _ in ruler_plot_points(section, dcis)] == [4096, 8192, 16384, 32768, 65536]
    original = next(label for label in order if label.startswith("original") or label.startswith("none"))
    assert [length for length, _ in ruler_plot_points(section, original)] == [4096, 8192]


def test_scalings_table_says_how_each_search_was_made() -> None:
    from ropext.report.tables import _provenance_summary

    floored = load_results([BENCH / "critical-floor-h100" / "ppl-longrope-32k-floor.json"])[0][0]
    unfloored = load_results([SEARCH_32K / "ppl-longrope-32k-32k.json"])[0][0]
    assert _provenance_summary(floored.scaling["provenance"]) == (
        "search by longrope, 374 evaluations, search ppl 35.57, critical floor"
    )
    unfloored_summary = _provenance_summary(unfloored.scaling["provenance"])
    assert unfloored_summary == "search by longrope, 374 evaluations, search ppl 35.02"


def test_plots_of_two_corpora_are_named_by_the_corpus_files(tmp_path: Path) -> None:
    other = read_json(SEARCH_32K / "ppl-pi-32k.json")
    other["options"]["corpus"] = "/elsewhere/data/b.jsonl"
    for result in other["results"].values():
        result["corpus_fingerprint"] = "0123456789abcdef"
    (tmp_path / "other.json").write_text(json.dumps(other))
    out = tmp_path / "out"
    assert_ok(run_cli("report", SEARCH_32K / "ppl-yarn-32k.json", tmp_path / "other.json", "--out", out))
    assert sorted(p.name for p in out.glob("ppl-*.png")) == [
        "ppl-smollm2-135m-corpus-b.jsonl.png",
        "ppl-smollm2-135m-corpus-books-dev.jsonl.gz.png",
    ]


def test_a_section_split_off_by_its_fingerprint_says_why(tmp_path: Path) -> None:
    changed = read_json(SEARCH_32K / "ppl-pi-32k.json")
    for result in changed["results"].values():
        result["corpus_fingerprint"] = "0123456789abcdef"  # the same path, the file changed since
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    out = tmp_path / "out"
    assert_ok(run_cli("report", SEARCH_32K / "ppl-yarn-32k.json", tmp_path / "changed.json", "--out", out))
    page = (out / "report.md").read_text()
    notes = [line for line in page.splitlines() if line.startswith("Not merged with “Perplexity")]
    assert len(notes) == 2, page  # each of the two sections names the other and what differed
    assert "both read `.device/data/books-dev.jsonl.gz`" in notes[0]
    assert "fingerprint `7402cbda16a3c2e0`, those `0123456789abcdef`" in notes[0]
    assert "fingerprint `0123456789abcdef`, those `7402cbda16a3c2e0`" in notes[1]
    assert "changed or replaced between the runs" in notes[1]
    # Sections that differ by something else as well say nothing of the corpus.
    other = _variant(tmp_path, SEARCH_32K / "ppl-pi-32k.json", "docs.json", options={"skip_docs": 0})
    assert all(s.split_note is None for s in _sections(SEARCH_32K / "ppl-yarn-32k.json", other))


def test_every_plot_title_fits_in_its_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Long titles (several models, two corpus paths, the option that sets the section apart) are wrapped,
    not cut off at the figure's edge."""
    import ropext.report.plots

    figures = []
    saved = ropext.report.plots._save

    def keep(fig: Any, path: Path) -> None:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        titles = [fig._suptitle] + [t for ax in fig.axes for t in (ax.title, ax._left_title, ax._right_title)]
        shown = [(t.get_text(), t.get_window_extent(renderer)) for t in titles if t is not None and t.get_text()]
        figures.append((path.name, fig.bbox.x0, fig.bbox.x1, shown))
        saved(fig, path)

    monkeypatch.setattr(ropext.report.plots, "_save", keep)
    files = [*METHOD_FILES, *sorted(SEARCH_32K.glob("*.json")), *sorted(FINETUNE.glob("*/*.json"))]
    files += sorted((BENCH / "critical-floor-h100").glob("*.json"))
    ropext.report.write_report(files, tmp_path / "out")
    longest = max(len(text) for _, _, _, shown in figures for text, _ in shown)
    assert longest > 110, "no title long enough to need wrapping"
    for name, left, right, shown in figures:
        assert shown, name
        for text, box in shown:
            assert left <= box.x0 and box.x1 <= right, f"{name}: title {text!r} spans {box.x0:.0f}..{box.x1:.0f}"
