"""Turning what the user typed after ``--model`` into a config, a tokenizer and a model."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropext.errors import RopextError
from ropext.locking import FileLock
from ropext.model.aliases import ALIASES, alias_path
from ropext.model.gguf_tokenizer import require_gguf_bos
from ropext.model.layout import RotaryLayout, read_layout
from ropext.paths import cache_dir


@dataclass(frozen=True)
class ModelSource:
    """Where a model lives: ``path`` is a folder or hub id, ``gguf_file`` a file name inside it."""

    spec: str
    """What the user typed."""
    path: str
    gguf_file: str | None = None
    is_local: bool = True

    def pretrained_kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def resolve(spec: str) -> ModelSource:
    """Alias, ``.gguf`` file, local folder with config.json, or (last) a Hugging Face hub id."""
    key = spec.strip()
    if key.lower() in ALIASES:
        gguf = alias_path(key.lower())
        return ModelSource(spec, str(gguf.parent), gguf.name)
    path = Path(key).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise RopextError(f"model file {path} does not exist")
        return ModelSource(spec, str(path.resolve().parent), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise RopextError(f"model folder {path} has no config.json; point --model at a Hugging Face model folder")
        return ModelSource(spec, str(path.resolve()))
    if key.startswith((".", "/", "~")) or key.count("/") > 1:
        raise RopextError(f"model path {key} does not exist (built-in aliases: {', '.join(ALIASES)})")
    if key.count("/") != 1:
        known = ", ".join(ALIASES)
        raise RopextError(
            f"model {key!r} is neither a local path, a .gguf file, a built-in alias ({known}) nor a hub id (owner/name)"
        )
    return ModelSource(spec, key, is_local=False)


def _hub_errors(source: ModelSource, err: Exception) -> RopextError:
    # Every line of the message, joined: transformers often puts the useful part after the first one.
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
    if source.is_local:
        return RopextError(f"cannot read model {source.spec}: {text}")
    return RopextError(
        f"cannot load {source.spec!r} from the Hugging Face hub ({text}); "
        "download it where the hub is reachable and pass the local folder"
    )


def _converted_folder(source: ModelSource) -> Path:
    import transformers

    gguf = Path(source.path) / str(source.gguf_file)
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}".encode())
    return cache_dir() / "converted" / f"{gguf.stem}-{key.hexdigest()[:12]}"


def materialize(source: ModelSource) -> ModelSource:
    """A GGUF source as a cached Hugging Face folder (float32 safetensors and tokenizer).

    Dequantising a GGUF file takes transformers tens of seconds on every load; the converted folder
    loads in about a second, so the GGUF is converted once, on first use.
    """
    if not source.gguf_file:
        return source
    folder = _converted_folder(source)
    if not (folder / "config.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        # Runs started together (one per GPU) convert once: the first converts, the others wait and use it.
        with FileLock(folder, wait=True):
            if not (folder / "config.json").is_file():
                _convert_gguf(source, folder)
    return ModelSource(source.spec, str(folder))


def _convert_gguf(source: ModelSource, folder: Path) -> None:
    """Dequantise the GGUF into ``folder`` (written beside it, then renamed into place)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    with _status(f"converting {source.gguf_file} once to {folder}"):
        try:
            # the tokenizer first: it is checked before the minute the weights take
            tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
            require_gguf_bos(Path(source.path) / str(source.gguf_file), tokenizer)
            model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file, dtype=torch.float32)
        except (OSError, ValueError, KeyError) as err:
            raise _hub_errors(source, err) from None
        # The dequantised weights are plain tensors now; a saved quantization config would make
        # transformers look for the GGUF file again.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)


def quiet_transformers() -> None:
    """No per-tensor progress bars from transformers: ropext shows its own progress."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


@contextmanager
def _status(message: str) -> Iterator[None]:
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield


def load_config(source: ModelSource) -> Any:
    from transformers import AutoConfig

    if source.gguf_file and (_converted_folder(source) / "config.json").is_file():
        source = materialize(source)
    try:
        return AutoConfig.from_pretrained(source.path, **source.pretrained_kwargs())
    except (OSError, ValueError, KeyError) as err:
        raise _hub_errors(source, err) from None


def load_layout(spec: str) -> tuple[ModelSource, RotaryLayout]:
    source = resolve(spec)
    return source, read_layout(load_config(source), name=spec)


def load_tokenizer(source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    source = materialize(source)
    if source.is_local and not source.gguf_file:
        _require_tokenizer_files(Path(source.path))
    try:
        return AutoTokenizer.from_pretrained(source.path, **source.pretrained_kwargs())
    except (OSError, ValueError, KeyError) as err:
        raise _hub_errors(source, err) from None


# Files from which transformers builds a tokenizer: fast (tokenizer.json), SentencePiece (*.model) or
# vocabulary-based (vocab.json + merges.txt, vocab.txt).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "*.model", "vocab.json", "vocab.txt", "merges.txt")


def _require_tokenizer_files(folder: Path) -> None:
    if not any(any(folder.glob(pattern)) for pattern in _TOKENIZER_FILES):
        raise RopextError(
            f"model folder {folder} has no tokenizer (none of tokenizer.json, tokenizer.model, vocab.json or "
            "vocab.txt); copy the tokenizer files of the model it came from into it (tokenizer.save_pretrained)"
        )


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str | None, device: str) -> Any:
    """bf16 on a GPU, float32 on the CPU (where bf16 matmuls are slow), unless asked otherwise."""
    import torch

    if name is None or name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    table = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }
    if name not in table:
        raise RopextError(f"unknown dtype {name!r}; use one of auto, bf16, fp16, fp32")
    return table[name]


def load_model(source: ModelSource, device: str = "cpu", dtype: Any = None, attn_implementation: str = "sdpa") -> Any:
    """A causal LM in eval mode on ``device``; its weights must be present (GGUF is dequantised).

    ``sdpa`` on a model with sliding-window layers loads as ``ropext_sdpa`` (ropext/model/sliding_attention.py),
    which never builds a length x length mask for them."""
    from transformers import AutoModelForCausalLM

    from ropext.model.sliding_attention import attention_implementation

    quiet_transformers()
    source = materialize(source)
    if source.is_local:
        folder = Path(source.path)
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            raise RopextError(
                f"model folder {folder} has a config but no weights (*.safetensors); "
                "config-only folders serve weight-free methods (`ropext search --method pi|yarn|...`) only"
            )
    attn_implementation = attention_implementation(load_config(source), attn_implementation)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.path, dtype=dtype, attn_implementation=attn_implementation, **source.pretrained_kwargs()
        )
    except (OSError, ValueError, KeyError) as err:
        raise _hub_errors(source, err) from None
    return model.to(device).eval()
