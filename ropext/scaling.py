"""`RopeScaling`: the one value every command produces or consumes, and its YAML file.

A scaling is a vector of per-pair rescale factors λ_i (``inv_freq_i' = θ^(-2i/d) / λ_i``), an optional
second vector for inputs no longer than the original context, an attention factor that multiplies
cos and sin (transformers' convention) and LongRoPE's n̂ (``start_tokens``: positions below it keep
the original frequencies). Dynamic NTK is the one run-time method: its vector depends on the input
length, so ``factors`` records its value at the target length and `inv_freq` recomputes it.
"""

from __future__ import annotations

import math
import os
import re
import stat
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ropext.errors import RopextError
from ropext.permissions import new_file_mode

if TYPE_CHECKING:
    import torch

    from ropext.model.layout import RotaryLayout

SCHEMA_VERSION = 1
FACTOR_RANGE = (1e-3, 1e6)
"""Bounds of every λ_i (docs/decisions.md). Far outside them the scaled wavelengths leave float32's useful
range (1e-300 divides the frequencies into inf and perplexity into NaN; 1e308 rounds a wavelength to
inf), while every published method stays well inside: a factor λ stretches a wavelength λ times, and
1e6 stretches a 4k-token context to 4 billion."""
ATTENTION_FACTOR_RANGE = (1e-2, 1e2)
"""Bounds of ``attention_factor``: it multiplies cos and sin, so attention logits by its square (YaRN at
s = 1e6 gives 2.4)."""


@dataclass(frozen=True)
class RopeScaling:
    """Per-pair RoPE rescaling of one model, as written to and read from YAML."""

    method: str
    """Registry name of the method or searcher that produced it (a label; it changes behaviour only
    for a method whose registry entry says it is dynamic: its frequencies depend on the input length)."""
    rope_theta: float
    """Base θ of the model's RoPE."""
    rotary_dim: int
    """Number of rotated dimensions per head d; ``factors`` has d/2 entries."""
    original_max_position_embeddings: int
    """Context length L0 the model was trained to."""
    max_position_embeddings: int
    """Target context length L."""
    factors: tuple[float, ...]
    """λ_i for pair i = 0..d/2-1 (pair 0 rotates fastest)."""
    short_factors: tuple[float, ...] | None = None
    """Optional λ used instead of ``factors`` for inputs no longer than L0."""
    attention_factor: float = 1.0
    """Multiplies cos and sin, so attention logits scale by its square."""
    start_tokens: int = 0
    """LongRoPE's n̂: positions < n̂ use the original frequencies and no attention factor."""
    provenance: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """How it was made: method or searcher, parameters, corpus, score, model, ropext version."""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for key in ("factors", "short_factors"):
            vector = getattr(self, key)
            if vector is None:
                continue
            for i, x in enumerate(vector):
                if not _is_number(x):
                    raise RopextError(f"{key}[{i}] is {x!r}; every factor must be a positive number")
            object.__setattr__(self, key, tuple(float(x) for x in vector))
        _validate(self)

    # ------------------------------------------------------------------ frequencies
    @property
    def scale(self) -> float:
        """s = L / L0."""
        return self.max_position_embeddings / self.original_max_position_embeddings

    @property
    def is_dynamic(self) -> bool:
        """Whether the registry entry of ``method`` says its frequencies follow the input length."""
        return self._runtime_factors() is not None

    def _runtime_factors(self) -> Any:
        # The registry module imports no method module (they import this one), so asking it is no circle.
        from ropext.methods import method_of

        method = method_of(self.method)
        return None if method is None else method.runtime_factors

    @property
    def is_identity(self) -> bool:
        """True when applying it leaves every frequency and the attention scale unchanged."""
        return (
            not self.is_dynamic
            and all(x == 1.0 for x in self.factors)
            and (self.short_factors is None or all(x == 1.0 for x in self.short_factors))
            and self.attention_factor == 1.0
        )

    def factors_for(self, seq_len: int | None = None) -> tuple[float, ...]:
        """The λ vector used for an input of ``seq_len`` tokens (None: the target length)."""
        runtime_factors = self._runtime_factors()
        if runtime_factors is not None:
            length = self.max_position_embeddings if seq_len is None else seq_len
            return runtime_factors(self.rotary_dim, self.original_max_position_embeddings, self.scale, length)
        if self.short_factors is not None and seq_len is not None and seq_len <= self.original_max_position_embeddings:
            return self.short_factors
        return self.factors

    def inv_freq(self, seq_len: int | None = None, device: Any = None) -> torch.Tensor:
        """float32 inverse frequencies for an input of ``seq_len`` tokens, computed the way transformers'
        ``longrope`` does (``1 / (λ_i · θ^(2i/d))``) so an applied model matches bit for bit."""

        return scaled_inv_freq(self.rope_theta, self.rotary_dim, self.factors_for(seq_len), device=device)

    # ------------------------------------------------------------------ compatibility
    def check_matches(self, layout: RotaryLayout, source: str = "the scaling") -> None:
        """Refuse a scaling computed for another rotary layout, naming both sides."""
        problems = []
        if self.rotary_dim != layout.rotary_dim:
            problems.append(
                f"it has {len(self.factors)} factors (rotary_dim {self.rotary_dim}) but the model rotates "
                f"{layout.rotary_dim} dims per head ({layout.rotary_dim // 2} factors)"
            )
        if not math.isclose(self.rope_theta, layout.rope_theta, rel_tol=1e-6):
            problems.append(f"its rope_theta is {self.rope_theta:g} but the model's is {layout.rope_theta:g}")
        if self.original_max_position_embeddings != layout.original_max_position_embeddings:
            problems.append(
                f"its original_max_position_embeddings is {self.original_max_position_embeddings} but the "
                f"model's is {layout.original_max_position_embeddings}"
            )
        if problems:
            raise RopextError(
                f"{source} does not fit model {layout.name}: {problems[0]}; "
                "produce factors for this model with `ropext search --model ...`"
            )

    def keeping_short_context(self) -> RopeScaling:
        """The same long factors with inputs up to L0 run exactly as the original model: short factors of 1
        and attention factor 1.

        transformers' ``longrope`` has one attention factor for both regimes, so a short regime that equals
        the original model needs it to be 1 (docs/decisions.md, "Short context"); the long regime then runs
        without it, which a fine-tune recovers (docs/results.md, "Retrieval at the target").
        """
        if self.is_dynamic:
            raise RopextError(
                f"{self.method} already runs the original frequencies within the original context; "
                "--keep-short-context is for methods with fixed factors"
            )
        return replace(self, short_factors=(1.0,) * len(self.factors), attention_factor=1.0).with_provenance(
            short_context="original (short factors 1, attention factor 1)"
        )

    def with_provenance(self, **items: Any) -> RopeScaling:
        return replace(self, provenance={**self.provenance, **items})

    # ------------------------------------------------------------------ YAML
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["factors"] = list(self.factors)
        data["short_factors"] = None if self.short_factors is None else list(self.short_factors)
        return {name: data[name] for name in YAML_KEYS}

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, width=1 << 20)

    def save(self, path: str | Path) -> None:
        """Write atomically: a reader never sees a half-written file, and an old file survives a crash."""
        write_text_atomic(Path(path), self.to_yaml())

    @classmethod
    def from_dict(cls, data: Any, source: str = "scaling") -> RopeScaling:
        if not isinstance(data, dict):
            raise RopextError(f"{source}: expected a mapping of keys such as 'factors', got {type(data).__name__}")
        unknown = sorted(set(data) - set(YAML_KEYS))
        if unknown:
            raise RopextError(f"{source}: unknown key {unknown[0]!r}; the keys are {', '.join(YAML_KEYS)}")
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise RopextError(f"{source}: missing key {missing[0]!r}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RopextError(
                f"{source}: unsupported schema_version {version!r}; this ropext reads version {SCHEMA_VERSION}"
            )
        values = dict(data)
        if values.get("provenance") is None:
            values["provenance"] = {}
        try:
            for key in ("factors", "short_factors"):
                if values.get(key) is not None and not isinstance(values[key], list | tuple):
                    raise RopextError(f"{key} must be a list of numbers, got {values[key]!r}")
            return cls(**values)
        except RopextError as err:
            raise RopextError(f"{source}: {err}") from None
        except (TypeError, ValueError) as err:
            raise RopextError(f"{source}: {err}") from None

    @classmethod
    def load(cls, path: str | Path) -> RopeScaling:
        path = Path(path)
        check_scaling_file(path)
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
        except UnicodeDecodeError:
            raise RopextError(
                f"{path} is not a text file (not UTF-8); give the scaling YAML that `ropext search --out` writes"
            ) from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise RopextError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
        return cls.from_dict(data, source=str(path))


def check_scaling_file(path: Path, what: str = "factors file") -> None:
    """Refuse a path that is not a file, saying whether it is missing or a folder."""
    if path.is_dir():
        raise RopextError(
            f"{what} {path} is a folder; give a scaling YAML file (the file `ropext search ... --out F.yaml` writes)"
        )
    if not path.is_file():
        raise RopextError(f"{what} {path} does not exist; create one with `ropext search ... --out {path}`")


YAML_KEYS = [
    "schema_version",
    "method",
    "rope_theta",
    "rotary_dim",
    "original_max_position_embeddings",
    "max_position_embeddings",
    "factors",
    "short_factors",
    "attention_factor",
    "start_tokens",
    "provenance",
]
_DEFAULTED = {"short_factors", "attention_factor", "start_tokens", "provenance"}
REQUIRED_KEYS = [k for k in YAML_KEYS if k not in _DEFAULTED]
assert {f.name for f in fields(RopeScaling)} == set(YAML_KEYS)


def scaled_inv_freq(rope_theta: float, rotary_dim: int, factors: Any, device: Any = None) -> torch.Tensor:
    """``1 / (λ_i · θ^(2i/d))`` in float32, the same expression (and rounding) as transformers' longrope."""
    import torch

    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device=device).float() / rotary_dim
    ext = torch.as_tensor(factors, dtype=torch.float32, device=device)
    return 1.0 / (ext * rope_theta**exponent)


def original_inv_freq(rope_theta: float, rotary_dim: int, device: Any = None) -> torch.Tensor:
    """The model's un-scaled float32 inverse frequencies, as transformers computes them."""
    import torch

    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device=device).float() / rotary_dim
    return 1.0 / (rope_theta**exponent)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _validate(s: RopeScaling) -> None:
    def need(condition: bool, message: str) -> None:
        if not condition:
            raise RopextError(message)

    need(isinstance(s.method, str) and s.method != "", f"method must be a non-empty name, got {s.method!r}")
    need(_is_number(s.rope_theta) and s.rope_theta > 1, f"rope_theta must be a number > 1, got {s.rope_theta!r}")
    need(
        isinstance(s.rotary_dim, int) and s.rotary_dim >= 2 and s.rotary_dim % 2 == 0,
        f"rotary_dim must be an even integer >= 2, got {s.rotary_dim!r}",
    )
    for key in ("original_max_position_embeddings", "max_position_embeddings"):
        value = getattr(s, key)
        need(
            isinstance(value, int) and not isinstance(value, bool) and value > 0,
            f"{key} must be a positive integer, got {value!r}",
        )
    need(
        s.max_position_embeddings >= s.original_max_position_embeddings,
        f"max_position_embeddings {s.max_position_embeddings} is below original_max_position_embeddings "
        f"{s.original_max_position_embeddings}; the target context must be at least the original one",
    )
    for key in ("factors", "short_factors"):
        vector = getattr(s, key)
        if vector is None:
            continue
        need(
            len(vector) == s.rotary_dim // 2,
            f"{key} has {len(vector)} entries but rotary_dim {s.rotary_dim} needs {s.rotary_dim // 2}",
        )
        low, high = FACTOR_RANGE
        for i, x in enumerate(vector):
            need(math.isfinite(x) and x > 0, f"{key}[{i}] is {x!r}; every factor must be a positive number")
            need(low <= x <= high, f"{key}[{i}] is {x!r}; every factor must lie in [{low:g}, {high:g}]")
    need(
        _is_number(s.attention_factor) and math.isfinite(s.attention_factor) and s.attention_factor > 0,
        f"attention_factor must be a positive number, got {s.attention_factor!r}",
    )
    low, high = ATTENTION_FACTOR_RANGE
    need(
        low <= s.attention_factor <= high,
        f"attention_factor is {s.attention_factor!r}; it must lie in [{low:g}, {high:g}]",
    )
    need(
        isinstance(s.start_tokens, int) and not isinstance(s.start_tokens, bool) and s.start_tokens >= 0,
        f"start_tokens must be an integer >= 0, got {s.start_tokens!r}",
    )
    need(isinstance(s.provenance, dict), f"provenance must be a mapping, got {type(s.provenance).__name__}")
    if s.is_dynamic:
        need(
            s.short_factors is None and s.start_tokens == 0,
            "dynamic scaling is recomputed from the input length; it takes no short_factors or start_tokens",
        )


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e3``, ``1.5e3`` and ``.5e-3`` as numbers.

    PyYAML follows YAML 1.1, whose floats need a dot and a signed exponent (``1.0e+3``); anything else
    with an exponent stays a string, so a hand-written ``rope_theta: 1e5`` would be refused as "not a
    number". YAML 1.2 and JSON read these as floats, and so does ropext.
    """


# Checked after PyYAML's own int and float patterns (those come first for the same leading character), so
# integers stay ints and only the exponent forms PyYAML leaves as strings are added.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


class _Dumper(yaml.SafeDumper):
    """Block-style mappings, but factor vectors on one line each: a YAML file people can read and diff."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(_is_number(x) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(tuple, _represent_list)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` under a temporary name and rename it to ``path``: a reader (or a killed run) never sees
    half a file. A new file gets the permissions ``open`` would give it (the umask's), an existing one keeps
    its own (mkstemp alone would make both private)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = new_file_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
