"""Command-line options every evaluation shares, end to end on the tiny model: ``--max-len``, counts that must
be positive, ``--version``, help text, and a folder given where a scaling YAML is expected."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from integration_support import (
    ORIGINAL_CONTEXT,
    CorpusFiles,
    assert_clean_error,
    assert_ok,
    read_json,
    run_cli,
    run_cli_subprocess,
)

from ropext.cli import installed_version

PASSKEY_ARGS = ("--depths", "0", "--trials", "1", "--device", "cpu")


def test_passkey_max_len_evaluates_the_original_context_doubling_up_to_it(tiny_model: Path, tmp_path: Path) -> None:
    json_out = tmp_path / "passkey.json"
    result = run_cli("eval", "passkey", "--model", tiny_model, "--max-len", "768", *PASSKEY_ARGS, "--json", json_out)
    assert_ok(result)
    expected = [ORIGINAL_CONTEXT, 2 * ORIGINAL_CONTEXT, 768]  # 256, 512, then 768 itself
    document = read_json(json_out)
    assert document["options"]["lengths"] == expected
    assert list(document["results"]) == [str(length) for length in expected]
    assert "lengths 256, 512, 768: the original context 256 doubling up to --max-len 768" in result.stderr


def test_max_len_starts_at_the_scalings_original_context(tiny_model: Path, tmp_path: Path) -> None:
    json_out = tmp_path / "passkey.json"
    result = run_cli(
        "eval", "passkey", "--model", tiny_model, "--method", "yarn", "-t", "1k", "--max-len", "1k",
        *PASSKEY_ARGS, "--json", json_out,
    )  # fmt: skip
    assert_ok(result)
    assert read_json(json_out)["options"]["lengths"] == [256, 512, 1024]


def test_ruler_max_len_evaluates_the_original_context_doubling_up_to_it(tiny_model: Path, tmp_path: Path) -> None:
    # RULER's prompts need more than the tiny model's 256 tokens: the same weights, trained (says the config) to 1k.
    model = tmp_path / "tiny-1k"
    shutil.copytree(tiny_model, model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1024}))
    json_out = tmp_path / "ruler.json"
    result = run_cli(
        "eval", "ruler", "--model", model, "--max-len", "2k", "--tasks", "vt", "--samples", "1",
        "--device", "cpu", "--json", json_out,
    )  # fmt: skip
    assert_ok(result)
    document = read_json(json_out)
    assert document["options"]["lengths"] == [1024, 2048]
    assert list(document["results"]) == ["1024", "2048"]


def test_eval_run_max_len_serves_tasks_without_lengths_of_their_own(
    tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path
) -> None:
    result = run_cli(
        "eval", "run", "--model", tiny_model, "--tasks", "ppl,passkey", "--max-len", "512",
        "--ppl-lengths", "128", "--corpus", corpus_files.folder, "--max-docs", "1",
        *PASSKEY_ARGS, "--json-dir", tmp_path,
    )  # fmt: skip
    assert_ok(result)
    assert read_json(tmp_path / "ppl.json")["options"]["lengths"] == [128]
    assert read_json(tmp_path / "passkey.json")["options"]["lengths"] == [256, 512]


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        (["eval", "passkey"], []),
        (["eval", "ruler"], ["--tasks", "vt"]),
        (["eval", "ppl"], ["--corpus", "python-stdlib"]),
        (["eval", "run"], ["--tasks", "passkey"]),
    ],
)
def test_lengths_and_max_len_together_is_one_error(command: list[str], extra: list[str], tiny_model: Path) -> None:
    result = run_cli(*command, "--model", tiny_model, *extra, "--lengths", "256", "--max-len", "1k")
    assert_clean_error(result, "--lengths (256)", "--max-len (1k)", "not both")


def test_neither_lengths_nor_max_len_names_both(tiny_model: Path) -> None:
    assert_clean_error(run_cli("eval", "passkey", "--model", tiny_model), "--lengths", "--max-len")


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["eval", "passkey", "--max-len", "64q"], "'64q' given to --max-len"),
        (["eval", "run", "--tasks", "passkey,ruler", "--lengths", "256", "--ruler-lengths", ","], "--ruler-lengths"),
        (["eval", "run", "--tasks", "passkey", "--passkey-lengths", "1.5"], "given to --passkey-lengths"),
        (["eval", "ruler", "--lengths", "2k", "-t", "x", "--method", "yarn"], "given to --target-length"),
    ],
)
def test_length_errors_name_the_flag_the_user_typed(arguments: list[str], fragment: str, tiny_model: Path) -> None:
    assert_clean_error(run_cli(*arguments[:2], "--model", tiny_model, *arguments[2:]), fragment)


@pytest.mark.parametrize(
    ("arguments", "option"),
    [
        (["eval", "passkey", "--max-len", "10000000000"], "--max-len"),
        (
            ["eval", "run", "--tasks", "passkey,ruler", "--lengths", "256", "--ruler-lengths", "10000000000"],
            "--ruler-lengths",
        ),
    ],
)
def test_a_length_no_memory_holds_is_named_under_its_option(
    arguments: list[str], option: str, tiny_model: Path
) -> None:
    result = run_cli(*arguments[:2], "--model", tiny_model, "--device", "cpu", *arguments[2:])
    assert_clean_error(result, f"{option} ", "a window of")


@pytest.mark.parametrize("value", ["0", "-5"])
@pytest.mark.parametrize(
    "command",
    [
        ["eval", "ppl", "--model", "m", "--corpus", "c", "--lengths", "8k"],
        ["eval", "run", "--model", "m", "--tasks", "ppl", "--lengths", "8k"],
        ["finetune", "--model", "m", "-f", "f.yaml", "--corpus", "c", "-t", "8k", "--steps", "1", "--out", "o"],
    ],
)
def test_chunk_tokens_must_be_positive(command: list[str], value: str) -> None:
    assert_clean_error(run_cli(*command, "--chunk-tokens", value), "--chunk-tokens", "greater than or equal to 1")


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["search", "--model", "m", "--method", "dcis", "-t", "8k", "--out", "o.yaml"], "--samples"),
        (["search", "--model", "m", "--method", "dcis", "-t", "8k", "--out", "o.yaml"], "--budget"),
        (["search", "--model", "m", "--method", "dcis", "-t", "8k", "--out", "o.yaml"], "--max-batch-tokens"),
        (["eval", "passkey", "--model", "m", "--lengths", "8k"], "--trials"),
        (["eval", "ppl", "--model", "m", "--corpus", "c", "--lengths", "8k"], "--max-docs"),
        (["eval", "ruler", "--model", "m", "--lengths", "8k"], "--samples"),
        (["eval", "ruler", "--model", "m", "--lengths", "8k"], "--batch-size"),
        (["eval", "ruler", "--model", "m", "--lengths", "8k"], "--max-new-tokens"),
        (["eval", "run", "--model", "m", "--tasks", "ruler", "--lengths", "8k"], "--batch-size"),
        (["finetune", "--model", "m", "-f", "f", "--corpus", "c", "-t", "8k", "--out", "o"], "--steps"),
        (["finetune", "--model", "m", "-f", "f", "--corpus", "c", "-t", "8k", "--steps", "1", "--out", "o"], "--gpus"),
        (["inspect", "f.yaml"], "--intervals"),
    ],
)
def test_counts_that_must_be_positive_refuse_zero(command: list[str], option: str) -> None:
    # Refused while the command line is read: nothing is loaded, and the line names the option.
    assert_clean_error(run_cli(*command, option, "0"), f"'{option}'", "greater than or equal to 1")


def test_version_prints_the_installed_version() -> None:
    result = run_cli_subprocess("--version")
    assert_ok(result)
    assert result.stdout.strip() == f"ropext {installed_version()}"
    assert result.stdout.strip().split()[1].count(".") == 2  # X.Y.Z


@pytest.mark.parametrize("command", [["search"], ["finetune"], ["inspect"], ["export"]])
def test_help_shows_flags_without_a_value_type(command: list[str]) -> None:
    result = run_cli(*command, "--help")
    assert_ok(result)
    assert "<bool>" not in result.stdout
    flag = {
        "search": "--critical-floor / --no-critical-floor",
        "finetune": "--resume / --no-resume",
        "inspect": "--json ",
        "export": "--force ",
    }[command[0]]
    assert flag in result.stdout


@pytest.mark.parametrize(("command", "listed"), [([], "search"), (["eval"], "passkey")])
def test_a_group_alone_prints_its_help(command: list[str], listed: str) -> None:
    result = run_cli_subprocess(*command)
    assert_ok(result)
    assert result.stdout.startswith("Usage: ")
    assert f"  {listed} " in result.stdout
    assert "error" not in result.stderr


def test_inspect_of_a_folder_says_it_is_a_folder(tmp_path: Path) -> None:
    assert_clean_error(run_cli("inspect", tmp_path), str(tmp_path), "is a folder", "scaling YAML file")


def test_eval_factors_folder_says_it_is_a_folder(tiny_model: Path, tmp_path: Path) -> None:
    result = run_cli("eval", "passkey", "--model", tiny_model, "--lengths", "256", "--factors", tmp_path)
    assert_clean_error(result, "is a folder")


def test_a_hand_written_yaml_with_1e3_works_on_the_command_line(tiny_model: Path, tmp_path: Path) -> None:
    from ropext.methods import METHODS
    from ropext.model.loading import load_layout

    _, layout = load_layout(str(tiny_model))
    text = METHODS.get("pi")(layout, 1024).to_yaml()
    assert "rope_theta: 10000.0" in text and "factors: [4.0, 4.0" in text
    path = tmp_path / "hand.yaml"
    path.write_text(text.replace("rope_theta: 10000.0", "rope_theta: 1e4").replace("4.0", "4e0"))
    result = run_cli("inspect", path, "--json")
    assert_ok(result)
    assert json.loads(result.stdout)["factors"] == [4.0] * layout.pairs
