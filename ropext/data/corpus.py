"""What ``--corpus`` names: local files or folders, a hub dataset, or the built-in ``python-stdlib``.

Local and hub corpora are read through `datasets` (json/jsonl(.gz), parquet, whole-file text);
every document is the ``text`` field of a record.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ropext.errors import RopextError
from ropext.paths import cache_dir

BUILTIN_STDLIB = "python-stdlib"
TEXT_FIELD = "text"
# datasets builder for each file type ropext reads; a .txt file is one document.
_BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".jsonl.gz": "json",
    ".json.gz": "json",
    ".parquet": "parquet",
    ".txt": "text",
}
_STDLIB_MIN_BYTES = 16_000  # long modules only: the point is long documents


@dataclass(frozen=True)
class Corpus:
    name: str
    """As given on the command line."""
    fingerprint: str
    """Changes whenever the documents may have changed (paths, sizes, modification times)."""
    read: Callable[[], Iterator[str]]
    """Yields the documents' texts, in a fixed order."""


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(_BUILDERS, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skipped = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}
    files = [
        p
        for p in root.rglob("*.py")
        if not skipped.intersection(p.relative_to(root).parts) and p.stat().st_size >= _STDLIB_MIN_BYTES
    ]
    return sorted(files, key=lambda p: str(p.relative_to(root)))


def _files_fingerprint(kind: str, files: list[Path]) -> str:
    digest = hashlib.sha256(kind.encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def stdlib_corpus() -> Corpus:
    files = _stdlib_files()
    fingerprint = _files_fingerprint(f"{BUILTIN_STDLIB}-{sys.version_info[:3]}", files)

    def read() -> Iterator[str]:
        for path in files:
            yield path.read_text(encoding="utf-8", errors="replace")

    return Corpus(BUILTIN_STDLIB, fingerprint, read)


def _local_files(path: Path) -> list[Path]:
    if path.is_file():
        if not _suffix(path):
            raise RopextError(f"corpus file {path} is not .txt, .jsonl(.gz), .json(.gz) or .parquet")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p))
    if not files:
        raise RopextError(f"corpus folder {path} holds no .txt, .jsonl(.gz), .json(.gz) or .parquet files")
    return files


def _dataset_texts(dataset, name: str) -> Iterator[str]:
    if TEXT_FIELD not in dataset.column_names:
        raise RopextError(f"corpus {name} has no {TEXT_FIELD!r} field (fields: {', '.join(dataset.column_names)})")
    for number, record in enumerate(dataset, start=1):
        text = record[TEXT_FIELD]
        if text is not None and not isinstance(text, str):
            raise RopextError(
                f"corpus {name}: record {number} has a {TEXT_FIELD!r} of type {type(text).__name__} "
                f"({str(text)[:40]}), not a string; every document's {TEXT_FIELD!r} must be text"
            )
        if text:
            yield text


def local_corpus(spec: str) -> Corpus:
    path = Path(spec).expanduser()
    files = _local_files(path)
    by_builder: dict[str, list[str]] = {}
    for file in files:
        by_builder.setdefault(_BUILDERS[_suffix(file)], []).append(str(file))

    def read() -> Iterator[str]:
        import datasets

        datasets.disable_progress_bars()
        for builder, data_files in by_builder.items():
            extra = {"sample_by": "document"} if builder == "text" else {}
            try:
                dataset = datasets.load_dataset(
                    builder,
                    data_files=data_files,
                    split="train",
                    cache_dir=str(cache_dir() / "datasets"),
                    **extra,
                )
            except Exception as err:  # datasets raises many types for unreadable files
                from ropext.data.diagnose import first_problem, one_line

                problem = first_problem(builder, data_files, TEXT_FIELD)
                raise RopextError(problem or f"cannot read corpus {spec}: {one_line(err)}") from None
            yield from _dataset_texts(dataset, spec)

    return Corpus(spec, _files_fingerprint("local", files), read)


def hub_corpus(spec: str) -> Corpus:
    """``owner/name`` or ``owner/name:split`` (default split ``test``... then ``validation``, ``train``)."""
    name, _, split = spec.partition(":")

    def read() -> Iterator[str]:
        import datasets

        try:
            dataset = datasets.load_dataset(name, split=split or "test", cache_dir=str(cache_dir() / "datasets"))
        except Exception as err:
            raise RopextError(
                f"cannot load corpus {spec!r} from the Hugging Face hub ({str(err).splitlines()[0]}); "
                "download it where the hub is reachable and pass the local files"
            ) from None
        yield from _dataset_texts(dataset, spec)

    return Corpus(spec, hashlib.sha256(f"hub|{spec}".encode()).hexdigest()[:16], read)


def open_corpus(spec: str) -> Corpus:
    if spec == BUILTIN_STDLIB:
        return stdlib_corpus()
    path = Path(spec).expanduser()
    if path.exists():
        return local_corpus(spec)
    if spec.startswith((".", "/", "~")) or _suffix(path) or spec.count("/") != 1:
        raise RopextError(
            f"corpus {spec} does not exist; give a .txt/.jsonl(.gz)/.parquet file or folder, a hub dataset "
            f"(owner/name[:split]) or the built-in {BUILTIN_STDLIB!r}"
        )
    return hub_corpus(spec)
