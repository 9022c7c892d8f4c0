"""Turning what the user typed after ``--model`` into a config, a tokenizer and a model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ropext.errors import RopextError
from ropext.model.aliases import ALIASES, alias_path
from ropext.model.layout import RotaryLayout, read_layout


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
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if source.is_local:
        return RopextError(f"cannot read model {source.spec}: {text}")
    return RopextError(
        f"cannot load {source.spec!r} from the Hugging Face hub ({text}); "
        "download it where the hub is reachable and pass the local folder"
    )


def load_config(source: ModelSource) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.path, **source.pretrained_kwargs())
    except (OSError, ValueError, KeyError) as err:
        raise _hub_errors(source, err) from None


def load_layout(spec: str) -> tuple[ModelSource, RotaryLayout]:
    source = resolve(spec)
    return source, read_layout(load_config(source), name=spec)


def load_tokenizer(source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.path, **source.pretrained_kwargs())
    except (OSError, ValueError, KeyError) as err:
        raise _hub_errors(source, err) from None


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str | None, device: str) -> Any:
    """bf16 on a GPU, float32 on the CPU (where bf16 matmuls are slow), unless asked otherwise."""
    import torch

    if name is None or name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
             "fp32": torch.float32, "float32": torch.float32}
    if name not in table:
        raise RopextError(f"unknown dtype {name!r}; use one of auto, bf16, fp16, fp32")
    return table[name]


def load_model(source: ModelSource, device: str = "cpu", dtype: Any = None, attn_implementation: str = "sdpa") -> Any:
    """A causal LM in eval mode on ``device``; its weights must be present (GGUF is dequantised)."""
    from transformers import AutoModelForCausalLM

    if source.is_local and not source.gguf_file:
        folder = Path(source.path)
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            raise RopextError(
                f"model folder {folder} has a config but no weights (*.safetensors); "
                "config-only folders serve weight-free methods (`ropext search --method pi|yarn|...`) only"
            )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.path, dtype=dtype, attn_implementation=attn_implementation, **source.pretrained_kwargs()
        )
    except (OSError, ValueError, KeyError) as err:
        raise _hub_errors(source, err) from None
    return model.to(device).eval()
