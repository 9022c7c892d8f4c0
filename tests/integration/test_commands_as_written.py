"""The quick start's commands run exactly as typed: ``ropext search --method dcis``, ``ropext finetune --factors
f.yaml`` and ``ropext eval passkey --max-len 64k`` fill in the documented defaults and say each one once.

The built-in model is never downloaded here: ``smollm2-135m`` resolves to a folder holding SmolLM2-135M's
config alone (its real shape: 8k context, head dim 64), and the work itself (a 32k search, a 64k passkey, a
fine-tune) is replaced where its request is complete. One fine-tune runs for real, on the tiny model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from integration_support import CorpusFiles, assert_clean_error, assert_ok, run_cli, run_cli_subprocess

from ropext.commands.defaults import DEFAULT_CORPUS, DEFAULT_MODEL, DEFAULT_STEPS
from ropext.errors import RopextError
from ropext.methods import METHODS
from ropext.model.loading import ModelSource, load_layout
from ropext.scaling import RopeScaling

SMOLLM2_CONTEXT = 8192
DEFAULT_MODEL_LINE = f"model: {DEFAULT_MODEL} (the default; --model picks another)"
DEFAULT_CORPUS_LINE = f"corpus: {DEFAULT_CORPUS} (the default; --corpus picks another)"


@pytest.fixture(scope="module")
def smollm2_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct's config (no weights): what the alias's GGUF tells transformers."""
    from transformers import LlamaConfig

    folder = tmp_path_factory.mktemp("smollm2-config")
    LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=SMOLLM2_CONTEXT,
        rope_theta=100000.0,
    ).save_pretrained(folder)
    return folder


@pytest.fixture
def offline_alias(smollm2_config: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The default model resolves to its config folder instead of being fetched; the test runs in ``tmp_path``
    (the defaults write into the current folder). Returns ``tmp_path``."""
    from ropext.model import loading

    real = loading.resolve

    def resolve(spec: str) -> ModelSource:
        if spec.strip().lower() == DEFAULT_MODEL:
            return ModelSource(spec, str(smollm2_config))
        return real(spec)

    monkeypatch.setattr(loading, "resolve", resolve)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@dataclass
class Captured:
    """What the replaced work was asked to do."""

    calls: list[dict[str, Any]]

    @property
    def only(self) -> dict[str, Any]:
        assert len(self.calls) == 1, self.calls
        return self.calls[0]


@pytest.fixture
def searches(monkeypatch: pytest.MonkeyPatch) -> Captured:
    from ropext.commands import search_command

    captured = Captured([])

    def run(request: Any, out: Path, journal: Path, keep_short_context: bool = False) -> None:
        captured.calls.append({"request": request, "out": out, "journal": journal})

    monkeypatch.setattr(search_command, "_run_searcher", run)
    return captured


@pytest.fixture
def finetunes(monkeypatch: pytest.MonkeyPatch) -> Captured:
    from ropext.train import trainer

    captured = Captured([])

    def plan(request: Any, world_size: int = 1) -> Any:
        captured.calls.append({"request": request})
        # A plan holds its request with the training windows resolved to numbers: plain ones here.
        return SimpleNamespace(request=replace(request, position_skip=None, short_share=0.0, needle_share=0.0))

    def run(plan: Any, world: Any, shown: Any) -> Any:
        state = SimpleNamespace(step=plan.request.steps, tokens=0)
        return SimpleNamespace(world=SimpleNamespace(is_main=True), first_step=0, last_loss=None, state=state)

    monkeypatch.setattr(trainer, "plan_finetune", plan)
    monkeypatch.setattr(trainer, "run_finetune", run)
    return captured


@pytest.fixture
def evaluations(monkeypatch: pytest.MonkeyPatch) -> Captured:
    """Every evaluating command stops where the weights would load, after every option is settled."""
    from ropext.commands.common import Scaled

    captured = Captured([])

    def prepare(self: Scaled, lengths: dict[str, tuple[int, ...]], chosen: Any) -> Any:
        captured.calls.append({"model": self.model, "lengths": lengths, "scaling": chosen[1]})
        raise RopextError("stopped where the weights would load")

    monkeypatch.setattr(Scaled, "prepare", prepare)
    return captured


def _scaling_file(path: Path, layout: Any, target: int, **provenance: Any) -> Path:
    METHODS.get("yarn")(layout, target).with_provenance(**provenance).save(path)
    return path


def test_search_as_written_searches_4x_the_default_model_on_the_built_in_text(
    offline_alias: Path, searches: Captured
) -> None:
    result = run_cli("search", "--method", "dcis")
    assert_ok(result)
    call = searches.only
    request = call["request"]
    assert (request.model, request.corpus, request.target_length) == (DEFAULT_MODEL, DEFAULT_CORPUS, 32768)
    assert request.samples == 5  # python-stdlib holds exactly 5 documents of 32k+ SmolLM2 tokens
    assert call["out"] == Path("dcis-32k.yaml")
    assert call["journal"] == Path("dcis-32k.yaml.journal.jsonl")
    for line in (
        DEFAULT_MODEL_LINE,
        "target length: 32k (4 x the original 8k; --target-length picks another)",
        "out: dcis-32k.yaml (the default; --out picks another)",
        DEFAULT_CORPUS_LINE,
    ):
        assert result.stderr.count(line) == 1, result.stderr
    assert result.stdout == ""  # the defaults are stated on stderr only


def test_search_options_given_are_not_restated(offline_alias: Path, searches: Captured) -> None:
    result = run_cli("search", "--method", "dcis", "-t", "16k", "--out", "mine.yaml", "--corpus", "python-stdlib")
    assert_ok(result)
    assert searches.only["request"].target_length == 16384
    assert searches.only["out"] == Path("mine.yaml")
    assert result.stderr.strip() == DEFAULT_MODEL_LINE  # the model alone was left out


def test_closed_form_search_as_written_writes_the_default_file(offline_alias: Path) -> None:
    result = run_cli("search", "--method", "YaRN")
    assert_ok(result)
    written = RopeScaling.load(offline_alias / "yarn-32k.yaml")
    assert (written.original_max_position_embeddings, written.max_position_embeddings) == (8192, 32768)
    assert written.provenance["model"] == DEFAULT_MODEL  # what a later `--factors yarn-32k.yaml` follows
    assert DEFAULT_CORPUS not in result.stderr  # a closed-form method reads no text


def test_search_from_follows_the_model_the_starting_factors_record(
    offline_alias: Path, searches: Captured, tiny_model: Path
) -> None:
    start = _scaling_file(offline_alias / "start.yaml", load_layout(str(tiny_model))[1], 512, model=str(tiny_model))
    result = run_cli("search", "--method", "dcis", "--from", start)
    assert_ok(result)
    request = searches.only["request"]
    assert request.model == str(tiny_model)
    assert request.target_length == 1024  # 4 x the tiny model's 256
    assert searches.only["out"] == Path("dcis-1k.yaml")
    assert f"model: {tiny_model} (from {start}; --model picks another)" in result.stderr


def test_finetune_as_written_trains_the_model_the_factors_record(offline_alias: Path, finetunes: Captured) -> None:
    assert_ok(run_cli("search", "--method", "yarn"))  # the file `ropext search` writes, provenance and all
    (offline_alias / "yarn-32k.yaml").rename(offline_alias / "f.yaml")
    result = run_cli("finetune", "--factors", "f.yaml")
    assert_ok(result)
    request = finetunes.only["request"]
    assert request.model == DEFAULT_MODEL
    assert request.factors == Path("f.yaml")
    assert request.corpus == DEFAULT_CORPUS
    assert request.train_length == SMOLLM2_CONTEXT
    assert request.steps == DEFAULT_STEPS == 200
    assert request.out == Path("f-finetuned")
    for line in (
        f"model: {DEFAULT_MODEL} (from f.yaml; --model picks another)",
        DEFAULT_CORPUS_LINE,
        "train length: 8k (the model's original context; --train-length picks another)",
        "steps: 200 (the default; --steps picks another)",
        "out: f-finetuned/ (the default; --out picks another)",
    ):
        assert result.stderr.count(line) == 1, result.stderr
    assert result.stdout.startswith("wrote f-finetuned: 200 steps")


def test_explicit_model_beats_the_provenance(offline_alias: Path, finetunes: Captured, tiny_model: Path) -> None:
    factors = _scaling_file(offline_alias / "f.yaml", load_layout(str(tiny_model))[1], 1024, model=DEFAULT_MODEL)
    result = run_cli("finetune", "--factors", factors, "--model", tiny_model)
    assert_ok(result)
    assert finetunes.only["request"].model == str(tiny_model)
    assert "model:" not in result.stderr


def test_a_yaml_without_a_provenance_model_falls_back_to_the_default(
    offline_alias: Path, finetunes: Captured, smollm2_config: Path
) -> None:
    factors = _scaling_file(offline_alias / "bare.yaml", load_layout(str(smollm2_config))[1], 32768)
    assert "model" not in RopeScaling.load(factors).provenance
    result = run_cli("finetune", "--factors", factors)
    assert_ok(result)
    assert finetunes.only["request"].model == DEFAULT_MODEL
    assert result.stderr.count(DEFAULT_MODEL_LINE) == 1
    assert finetunes.only["request"].out == Path("bare-finetuned")


def test_eval_passkey_as_written_doubles_the_default_model_up_to_64k(
    offline_alias: Path, evaluations: Captured
) -> None:
    result = run_cli("eval", "passkey", "--max-len", "64k")
    assert_clean_error(result, "stopped where the weights would load")
    call = evaluations.only
    assert call["model"] == DEFAULT_MODEL
    assert call["lengths"] == {"--max-len": (8192, 16384, 32768, 65536)}
    assert call["scaling"] is None
    assert result.stderr.count(DEFAULT_MODEL_LINE) == 1
    assert "lengths 8k, 16k, 32k, 64k" in result.stderr


def test_eval_follows_the_factors_provenance(offline_alias: Path, evaluations: Captured, tiny_model: Path) -> None:
    factors = _scaling_file(offline_alias / "t.yaml", load_layout(str(tiny_model))[1], 1024, model=str(tiny_model))
    result = run_cli("eval", "ppl", "--factors", factors, "--lengths", "512", "--corpus", "python-stdlib")
    assert_clean_error(result, "stopped where the weights would load")
    assert evaluations.only["model"] == str(tiny_model)
    assert evaluations.only["scaling"].max_position_embeddings == 1024
    assert f"model: {tiny_model} (from {factors}; --model picks another)" in result.stderr
    assert "corpus:" not in result.stderr


@pytest.mark.parametrize(
    ("tasks", "states_corpus"), [("passkey,ppl", True), ("passkey", False)], ids=["with-ppl", "without-ppl"]
)
def test_eval_run_gives_ppl_the_built_in_text(
    offline_alias: Path, evaluations: Captured, tasks: str, states_corpus: bool
) -> None:
    result = run_cli("eval", "run", "--tasks", tasks, "--lengths", "8k")
    assert_clean_error(result, "stopped where the weights would load")  # ppl's options accepted the corpus
    assert evaluations.only["model"] == DEFAULT_MODEL
    assert (DEFAULT_CORPUS_LINE in result.stderr) is states_corpus


def test_export_follows_the_factors_provenance(
    offline_alias: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ropext.export

    exported: list[str] = []

    def export_model(model: str, scaling: Any, out: Path, **_: Any) -> Path:
        exported.append(model)
        raise RopextError("stopped where the weights would load")

    monkeypatch.setattr(ropext.export, "export_model", export_model)
    factors = _scaling_file(offline_alias / "t.yaml", load_layout(str(tiny_model))[1], 1024, model=str(tiny_model))
    assert_clean_error(run_cli("export", "--factors", factors, "--out", "hf"), "stopped")
    assert exported == [str(tiny_model)]


@pytest.mark.parametrize("command", ["finetune", "eval passkey", "export"])
def test_a_provenance_model_that_cannot_load_is_one_error_line(offline_alias: Path, command: str) -> None:
    gone = offline_alias / "moved-away-model"
    factors = offline_alias / "old.yaml"
    RopeScaling(
        method="pi",
        rope_theta=10000.0,
        rotary_dim=16,
        original_max_position_embeddings=256,
        max_position_embeddings=1024,
        factors=(4.0,) * 8,
        provenance={"model": str(gone)},
    ).save(factors)
    extra = {"finetune": [], "eval passkey": ["--lengths", "256"], "export": ["--out", "hf"]}[command]
    result = run_cli(*command.split(), "--factors", factors, *extra)
    assert_clean_error(result, str(factors), repr(str(gone)), "provenance.model", "pass --model")
    assert not (offline_alias / "old-finetuned").exists()
    assert not (offline_alias / "hf").exists()


def test_finetune_as_written_trains_the_tiny_model_its_factors_name(
    tiny_model: Path, corpus_files: CorpusFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end: the model and the train length come from tiny.yaml, the folder from its name."""
    monkeypatch.chdir(tmp_path)
    _scaling_file(tmp_path / "tiny.yaml", load_layout(str(tiny_model))[1], 1024, model=str(tiny_model))
    result = run_cli_subprocess("finetune", "--factors", "tiny.yaml", "--steps", "1", "--corpus", corpus_files.folder)
    assert_ok(result)
    out = tmp_path / "tiny-finetuned"
    config = json.loads((out / "config.json").read_text())
    assert config["max_position_embeddings"] == 1024
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "step" in m][-1] == 1
    assert f"model: {tiny_model} (from tiny.yaml; --model picks another)" in result.stderr
    assert "train length: 256 (the model's original context" in result.stderr
