"""`ropext export` end to end on the tiny Llama: the folder loads in plain transformers (no ropext) into the
logits of ropext's patched model, below and above the original context; bad input gives one error line."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from integration_support import ORIGINAL_CONTEXT, assert_clean_error, assert_ok, run_cli

from ropext.export import YAML_NAME
from ropext.methods.base import scaling_from_factors
from ropext.model.apply import apply_scaling
from ropext.model.layout import read_layout
from ropext.model.loading import load_config, load_model, resolve
from ropext.scaling import RopeScaling

TARGET = "1k"
LENGTHS = (200, 300)  # below and above the original 256 tokens
NATIVE_TYPE = {"custom": "longrope", "yarn": "yarn", "pi": "linear", "llama3": "llama3", "dynamic": "dynamic"}


def _factors(tiny_model: Path, method: str, folder: Path) -> Path:
    """A scaling YAML: closed-form ones from `ropext search`, a non-monotone custom vector written directly."""
    path = folder / f"{method}.yaml"
    if method == "custom":
        layout = read_layout(load_config(resolve(str(tiny_model))))
        factors = [3.0, 1.0, 2.5, 1.2, 4.0, 1.5, 6.0, 2.0]
        scaling_from_factors(layout, 1024, "custom", factors, attention_factor=1.1).save(path)
    else:
        assert_ok(run_cli("search", "--model", tiny_model, "--method", method, "-t", TARGET, "--out", path))
    return path


def _tokens(length: int) -> torch.Tensor:
    return torch.randint(2, 512, (1, length), generator=torch.Generator().manual_seed(length))


def _logits(model, length: int) -> torch.Tensor:
    with torch.no_grad():
        return model(_tokens(length)).logits.float()


def _patched(tiny_model: Path, scaling: RopeScaling | None):
    model = load_model(resolve(str(tiny_model)), dtype=torch.float32)
    return apply_scaling(model, scaling) if scaling is not None else model


@pytest.mark.parametrize("method", ["custom", "yarn", "pi", "llama3", "dynamic"])
def test_export_reloads_in_plain_transformers_with_the_same_logits(
    tiny_model: Path, tmp_path: Path, method: str
) -> None:
    from transformers import AutoModelForCausalLM

    factors = _factors(tiny_model, method, tmp_path)
    out = tmp_path / "exported"
    result = run_cli("export", "--model", tiny_model, "--factors", factors, "--out", out)
    assert_ok(result)
    assert f"as rope_type {NATIVE_TYPE[method]}" in result.stdout

    config = json.loads((out / "config.json").read_text())
    rope = config["rope_parameters"]
    assert rope["rope_type"] == NATIVE_TYPE[method]
    scaling = RopeScaling.load(factors)
    assert config["max_position_embeddings"] == (ORIGINAL_CONTEXT if method == "dynamic" else 1024)
    if method == "custom":  # vLLM's longrope schema, under both keys
        for key in ("short_factor", "long_factor", "original_max_position_embeddings"):
            assert key in rope
        assert rope["long_factor"] == rope["short_factor"] == list(scaling.factors)
        assert config["rope_scaling"] == {**rope, "type": "longrope"}
    else:
        assert "rope_scaling" not in config
    assert {"model.safetensors", "tokenizer.json", YAML_NAME} <= {p.name for p in out.iterdir()}
    exported_scaling = RopeScaling.load(out / YAML_NAME)
    assert exported_scaling == scaling and exported_scaling.provenance == scaling.provenance

    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    patched = _patched(tiny_model, scaling)
    for length in LENGTHS:
        torch.testing.assert_close(_logits(plain, length), _logits(patched, length), rtol=1e-5, atol=1e-5)
    unscaled = _logits(_patched(tiny_model, None), LENGTHS[-1])
    assert (_logits(plain, LENGTHS[-1]) - unscaled).abs().max() > 1e-3  # the test can fail


_PLAIN_TRANSFORMERS = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
tokens = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(tokens).logits.float(), sys.argv[3])
assert not any(name == "ropext" or name.startswith("ropext.") for name in sys.modules)
"""


def test_a_fresh_interpreter_without_ropext_gets_the_same_logits(tiny_model: Path, tmp_path: Path) -> None:
    factors = _factors(tiny_model, "custom", tmp_path)
    out = tmp_path / "exported"
    assert_ok(run_cli("export", "--model", tiny_model, "--factors", factors, "--out", out))
    tokens, logits = tmp_path / "tokens.pt", tmp_path / "logits.pt"
    torch.save(_tokens(LENGTHS[-1]), tokens)
    completed = subprocess.run(
        [sys.executable, "-c", _PLAIN_TRANSFORMERS, str(out), str(tokens), str(logits)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repository, so `ropext` is not importable by accident
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    expected = _logits(_patched(tiny_model, RopeScaling.load(factors)), LENGTHS[-1])
    torch.testing.assert_close(torch.load(logits), expected, rtol=1e-5, atol=1e-5)


def test_start_tokens_are_refused_with_one_error_line(tiny_model: Path, tmp_path: Path) -> None:
    factors = _factors(tiny_model, "custom", tmp_path)
    dataclasses.replace(RopeScaling.load(factors), start_tokens=8).save(factors)
    out = tmp_path / "exported"
    result = run_cli("export", "--model", tiny_model, "--factors", factors, "--out", out)
    assert_clean_error(result, "start_tokens (n̂ = 8) cannot be expressed", "search_start_tokens=false", "ropext eval")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["custom.yaml"]


def test_an_existing_folder_needs_force(tiny_model: Path, tmp_path: Path) -> None:
    factors = _factors(tiny_model, "pi", tmp_path)
    out = tmp_path / "exported"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = run_cli("export", "--model", tiny_model, "--factors", factors, "--out", out)
    assert_clean_error(result, "exists and is not empty", "--force")
    assert (out / "notes.txt").read_text() == "keep me"
    assert_ok(run_cli("export", "--model", tiny_model, "--factors", factors, "--out", out, "--force"))
    assert not (out / "notes.txt").exists()
    assert json.loads((out / "config.json").read_text())["rope_parameters"]["rope_type"] == "linear"


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ({"dtype": "int8"}, ("unknown --dtype 'int8'", "bf16")),
        ({"factors": "missing.yaml"}, ("factors file", "does not exist")),
        ({"rope_theta": 500000.0}, ("does not fit model", "rope_theta")),
    ],
)
def test_bad_input_gives_one_error_line(tiny_model: Path, tmp_path: Path, change: dict, fragments: tuple) -> None:
    factors = _factors(tiny_model, "pi", tmp_path)
    if "rope_theta" in change:
        dataclasses.replace(RopeScaling.load(factors), rope_theta=change["rope_theta"]).save(factors)
    if "factors" in change:
        factors = tmp_path / change["factors"]
    args = ["export", "--model", tiny_model, "--factors", factors, "--out", tmp_path / "exported"]
    result = run_cli(*args, "--dtype", change.get("dtype", "auto"))
    assert_clean_error(result, *fragments)
    assert not (tmp_path / "exported").exists()


def test_a_model_without_weights_is_refused(config_only_model: Path, tmp_path: Path) -> None:
    factors = tmp_path / "pi.yaml"
    assert_ok(run_cli("search", "--model", config_only_model, "--method", "pi", "-t", TARGET, "--out", factors))
    result = run_cli("export", "--model", config_only_model, "--factors", factors, "--out", tmp_path / "exported")
    assert_clean_error(result, "has a config but no weights")


def test_bf16_export_keeps_float32_rope(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    factors = _factors(tiny_model, "yarn", tmp_path)
    out = tmp_path / "exported"
    result = run_cli("export", "--model", tiny_model, "--factors", factors, "--out", out, "--dtype", "bf16")
    assert_ok(result)
    assert "dtype bfloat16" in result.stdout
    model = AutoModelForCausalLM.from_pretrained(out)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32


def test_the_exported_folder_and_files_follow_the_umask(tiny_model: Path, tmp_path: Path) -> None:
    import os
    import stat

    factors = _factors(tiny_model, "pi", tmp_path)
    out = tmp_path / "exported"
    previous = os.umask(0o022)
    try:
        assert_ok(run_cli("export", "--model", tiny_model, "--factors", factors, "--out", out))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes[YAML_NAME] == modes["config.json"] == 0o644, modes
    assert set(modes.values()) == {0o644}, modes
