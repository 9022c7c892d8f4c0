"""``ropext search`` with a perplexity-guided searcher, in plain steps:
validate -> space -> objective -> journal -> searcher -> provenance."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ropext import __version__
from ropext.critical import critical_floors
from ropext.data.corpus import open_corpus
from ropext.data.tokenized import special_prefix
from ropext.distributed import World, join_launched_processes, launched_device
from ropext.errors import RopextError
from ropext.methods import METHODS
from ropext.model.layout import RotaryLayout
from ropext.model.loading import ModelSource, load_model, load_tokenizer, resolve_dtype
from ropext.scaling import RopeScaling
from ropext.search import SEARCHERS
from ropext.search.base import FACTS, Candidate, SearchSpace
from ropext.search.engine import EngineOptions, PerplexityEngine, WindowValues, frequencies_key
from ropext.search.journal import Journal
from ropext.search.objectives import DEFAULT_OBJECTIVE, OBJECTIVES, ObjectiveWindows
from ropext.search.objectives import search_windows as search_windows  # where callers (bench/) import it from
from ropext.search.racing import DEFAULT_MARGIN, RACE_BY_DEFAULT, Racing


@dataclass(frozen=True)
class SearchRequest:
    model: str
    searcher: str
    params: tuple[str, ...]
    corpus: str
    target_length: int
    samples: int = 5
    skip_docs: int = 0
    budget: int | None = None
    seed: int = 0
    devices: tuple[str, ...] = ()
    start_from: Path | None = None
    short_length: int | None = None
    attention: str | None = None
    """``yarn``, ``longrope``, ``none`` or a number; default per searcher."""
    dtype: str | None = None
    critical_floor: bool = True
    """Keep the factors of pairs that never complete a turn within the original context at s or above
    (``ropext.critical``), so no position up to the target reaches an angle unseen in training."""
    engine: EngineOptions = field(default_factory=EngineOptions)
    objective: str = "ppl"
    """What a candidate is scored by (``ropext.search.objectives``): ``ppl``, ``needle`` or a plugin's."""
    race: bool = RACE_BY_DEFAULT
    """Stop scoring a candidate once its first windows show it cannot beat the searcher's bound
    (``ropext.search.racing``)."""
    race_margin: float = DEFAULT_MARGIN
    """Nats per scored token a candidate may trail the bound by on its first windows (with ``race``)."""

    def racing(self) -> Racing | None:
        return Racing(self.race_margin) if self.race else None


SEARCHED = "search"
"""``--attention-factor search``: the searcher varies the attention factor, starting from its default."""


def attention_factor(spec: str, scale: float, original: int) -> float:
    from ropext.methods.attention import longrope_attention, yarn_attention

    if spec == "yarn":
        return yarn_attention(scale, original)
    if spec == "longrope":
        return longrope_attention(scale, original)
    if spec == "none":
        return 1.0
    try:
        value = float(spec)
    except ValueError:
        raise RopextError(
            f"--attention-factor {spec!r}: use yarn, longrope, none, search or a positive number"
        ) from None
    if not value > 0:
        raise RopextError(f"--attention-factor must be positive, got {value}")
    return value


def resolve_devices(devices: Sequence[str]) -> list[str]:
    if devices:
        for device in devices:
            if device.startswith("cuda") and not torch.cuda.is_available():
                raise RopextError(f"--devices {device}: no CUDA device is visible")
        return list(devices)
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


@dataclass(frozen=True)
class SearchPlan:
    """What the checked request settles before anything heavy loads."""

    searcher: Any
    params: Any
    base: RopeScaling | None
    """The --from scaling, if any."""
    short: bool
    """A short-factor search (--short-length): it varies --from's short vector, keeps its long factors and n̂."""
    window_length: int
    attention_spec: str
    attention: float
    """The attention factor of every candidate, or the one the search starts from when it varies it."""
    objective: Any = None
    """The registered objective (``ropext.search.objectives``)."""
    search_attention: bool = False
    """--attention-factor search: candidates carry their own attention factor."""


def run_search(
    request: SearchRequest,
    source: ModelSource,
    layout: RotaryLayout,
    journal_path: Path,
    on_progress: Callable[[int, int, float], None] | None = None,
) -> RopeScaling:
    """Search, journaling every evaluation; returns the best scaling with its provenance."""
    began = time.perf_counter()
    plan = validate(request, layout)
    space = search_space(layout, request, plan)
    world = join_launched_processes()
    # Under torchrun each process drives the GPU of its local rank; alone, every --devices GPU.
    devices = [launched_device()] if world.size > 1 else resolve_devices(request.devices)
    tokenizer = load_tokenizer(source)
    scored = plan.objective.windows(tokenizer, request, plan.window_length)
    identity = journal_identity(request, layout, plan, space, special_prefix(tokenizer))
    replicas = [(load_model(source, device=d, dtype=resolve_dtype(request.dtype, d)), d) for d in devices]
    # Only now that everything loaded: a run that fails before this leaves no journal behind.
    # Only rank 0 keeps the journal; the others receive its scores, so every process retraces the same steps.
    journal = Journal(journal_path, identity) if world.is_main else None
    try:
        engine = perplexity_engine(request, layout, plan, replicas, scored)
        earlier = replay_journal(engine, journal, world)  # seconds spent by earlier, interrupted runs
        replayed = len(engine.cache)
        expected = plan.searcher.expected_evaluations(space, plan.params)
        if request.budget is not None:
            expected = min(expected, request.budget)  # what the progress bar counts to: the budget stops it there
        engine.on_result = JournalRecorder(
            journal, plan.short, began, earlier, expected, engine, on_progress, plan.search_attention
        )
        objective = BudgetedObjective(engine, lambda c: to_scaling(request, layout, plan, c), request.budget)
        winner, score = run_searcher(plan, space, objective, request.seed)
    finally:
        if journal is not None:
            journal.close()
    seconds = earlier + time.perf_counter() - began  # the whole search, over all its runs
    return winner.with_provenance(
        **provenance(request, plan, space, engine, replayed, objective.stopped, seconds, score, devices, world),
        **objective_provenance(plan, scored),
    )


# ------------------------------------------------------------------------------------------- validate
def validate(request: SearchRequest, layout: RotaryLayout) -> SearchPlan:
    """Check the request against the model; one clear error for what does not fit, before anything loads."""
    searcher = SEARCHERS.get(request.searcher)
    chosen_objective = OBJECTIVES.get(request.objective)  # unknown: one line with the known names
    missing = [fact for fact in FACTS if not hasattr(searcher, fact)]
    if missing:
        raise RopextError(
            f"searcher {searcher.name!r} does not say its {', '.join(missing)}: "
            "give them in its registry entry (see ropext.search.base.Searcher)"
        )
    params = _parse(searcher, request.params)
    base = RopeScaling.load(request.start_from) if request.start_from else None
    if base is not None:
        base.check_matches(layout, source=str(request.start_from))
    short = request.short_length is not None
    if short and request.short_length < 2:
        raise RopextError(f"--short-length must be at least 2 tokens, got {request.short_length}")
    if not (math.isfinite(request.race_margin) and request.race_margin >= 0):
        raise RopextError(f"--race-margin must be a number of nats >= 0, got {request.race_margin}")
    if request.skip_docs < 0:
        raise RopextError(f"--skip-docs must be 0 or more, got {request.skip_docs}")
    if short and request.short_length > layout.original_max_position_embeddings:
        raise RopextError(
            f"--short-length {request.short_length} must not exceed the original context "
            f"{layout.original_max_position_embeddings}: short factors serve inputs up to it"
        )
    if short and base is None:
        raise RopextError("--short-length searches the short factors of --from FILE; give --from with the long factors")
    scale = request.target_length / layout.original_max_position_embeddings
    attention_spec = request.attention or searcher.default_attention
    search_attention = attention_spec == SEARCHED
    if search_attention:
        if not getattr(searcher, "searches_attention", False):
            raise RopextError(f"--attention-factor search: searcher {searcher.name!r} cannot vary it; use dcis")
        if short:
            raise RopextError(
                "--attention-factor search varies the long regime's factor; a --short-length search keeps --from's"
            )
    start_spec = searcher.default_attention if search_attention else attention_spec
    attention = (
        base.attention_factor
        if short and base is not None
        else attention_factor(start_spec, scale, layout.original_max_position_embeddings)
    )
    return SearchPlan(
        searcher=searcher,
        params=params,
        base=base,
        short=short,
        window_length=request.short_length if short else request.target_length,
        attention_spec=attention_spec,
        attention=attention,
        search_attention=search_attention,
        objective=chosen_objective,
    )


def _parse(searcher: Any, pairs: Sequence[str]) -> Any:
    from ropext.methods.base import parse_params

    return parse_params(searcher.params, pairs, where=f"searcher {searcher.name!r}")


# ---------------------------------------------------------------------------------------------- space
def search_space(layout: RotaryLayout, request: SearchRequest, plan: SearchPlan) -> SearchSpace:
    """Seeds, n̂ choices and floors of the search, from the searcher's own facts."""
    if plan.short:
        scale = max(request.short_length / layout.original_max_position_embeddings, 1.0)
        initial = [tuple([1.0] * layout.pairs)]
        if plan.base is not None and plan.base.short_factors is not None:
            initial.insert(0, plan.base.short_factors)
        return SearchSpace(layout.pairs, scale, tuple(initial), (0,))
    scale = request.target_length / layout.original_max_position_embeddings
    seeds = []
    if plan.base is not None:
        seeds.append(plan.base.factors)
    for name in plan.searcher.seed_methods(plan.params):
        method = METHODS.get(name)
        seeds.append(method.run(layout, request.target_length, method.params()).factors)
    floors = None
    if request.critical_floor:
        l0 = layout.original_max_position_embeddings
        floors = critical_floors(layout.rope_theta, layout.rotary_dim, l0, scale)
    attention = plan.attention if plan.search_attention else None
    return SearchSpace(layout.pairs, scale, tuple(seeds), tuple(plan.searcher.start_token_choices), floors, attention)


# ------------------------------------------------------------------------------------------ objective
def to_scaling(request: SearchRequest, layout: RotaryLayout, plan: SearchPlan, candidate: Candidate) -> RopeScaling:
    """The scaling a candidate stands for."""
    # A short-factor search varies --from's short vector and keeps its long factors and n̂.
    source = plan.base if plan.short else candidate
    long, start_tokens = source.factors, source.start_tokens
    return RopeScaling(
        method=plan.searcher.name,
        rope_theta=layout.rope_theta,
        rotary_dim=layout.rotary_dim,
        original_max_position_embeddings=layout.original_max_position_embeddings,
        max_position_embeddings=request.target_length,
        factors=long,
        short_factors=candidate.factors if plan.short else None,
        attention_factor=plan.attention if candidate.attention is None else candidate.attention,
        start_tokens=start_tokens,
    )


def perplexity_engine(
    request: SearchRequest,
    layout: RotaryLayout,
    plan: SearchPlan,
    replicas: list[tuple[Any, str]],
    scored: ObjectiveWindows,
) -> PerplexityEngine:
    unscaled = METHODS.get("none")(layout, layout.original_max_position_embeddings)
    options = replace(request.engine, candidates_per_batch=plan.searcher.batch_hint(plan.params))
    return PerplexityEngine(
        replicas, scored.ids, unscaled, options, scored.answer_lengths, scored.mix_weight, request.racing()
    )


class BudgetReached(Exception):
    pass


class BudgetedObjective:
    """The searcher's ``f(candidates) -> scores`` on the engine; past --budget it scores what fits and stops."""

    def __init__(
        self, engine: PerplexityEngine, to_scaling: Callable[[Candidate], RopeScaling], budget: int | None
    ) -> None:
        self.engine, self.to_scaling, self.budget = engine, to_scaling, budget
        self.seen: dict[str, Candidate] = {}
        self.stopped = False
        """Whether the budget ended the search."""

    def __call__(self, candidates: Sequence[Candidate], bound: Candidate | None = None) -> list[float]:
        engine = self.engine
        scalings = [self.to_scaling(c) for c in candidates]
        keys = [frequencies_key(s) for s in scalings]
        bound_key = frequencies_key(self.to_scaling(bound)) if bound is not None else None
        self.seen.update(zip(keys, candidates, strict=True))
        if self.budget is not None:
            new = list(dict.fromkeys(k for k in keys if k not in engine.cache))
            room = self.budget - len(engine.cache)
            if len(new) > room:
                # Spend the budget exactly: score the first candidates that fit, then stop.
                chosen = {k: s for k, s in zip(keys, scalings, strict=True) if k in set(new[: max(room, 0)])}
                if chosen:
                    engine(list(chosen.values()), list(chosen), bound_key)
                self.stopped = True
                raise BudgetReached
        return engine(scalings, keys, bound_key)

    def best_scored(self) -> tuple[Candidate, float]:
        """The best candidate scored so far (lowest score, then lowest key)."""
        scored = [k for k in self.seen if k in self.engine.cache]
        if not scored:
            raise RopextError("--budget must allow at least one evaluation") from None
        key = min(scored, key=lambda k: (self.engine.cache[k], k))
        return self.seen[key], self.engine.cache[key]


# -------------------------------------------------------------------------------------------- journal
def journal_identity(
    request: SearchRequest, layout: RotaryLayout, plan: SearchPlan, space: SearchSpace, prefix: list[int] | None = None
) -> dict[str, Any]:
    """What makes two runs the same search: a journal resumes only under an equal identity. ``prefix``: the
    windows' leading special tokens (`special_prefix`)."""
    identity = {
        "model": request.model,
        "layout": asdict(layout) | {"name": None},
        "corpus": request.corpus,
        "corpus_fingerprint": open_corpus(request.corpus).fingerprint,
        "window_length": plan.window_length,
        "samples": request.samples,
        "skip_docs": request.skip_docs,
        "target_length": request.target_length,
        "searcher": plan.searcher.name,
        "params": asdict(plan.params),
        "seed": request.seed,
        "attention_factor": plan.attention,
        "short": plan.short,
        "from": plan.base.to_dict() if plan.base is not None else None,
    }
    if plan.objective is not None and plan.objective.name != DEFAULT_OBJECTIVE:
        # Only when not ppl: journals written before objectives existed resume under the default.
        identity["objective"] = plan.objective.name
    if space.floors is not None:
        # Only when on: journals written before the floor existed resume under --no-critical-floor.
        identity["critical_floor"] = True
    racing = request.racing()
    if racing is not None:
        # Only when on: journals written before racing existed resume under --no-race. A raced journal
        # holds raced-out candidates (and a plain one full scores racing would not have computed), so
        # resuming either under the other setting would not retrace the same search.
        identity["racing"] = racing.identity()
    if plan.search_attention:
        identity["attention_searched"] = True  # only when on: older journals keep their identity
    if prefix:
        # Only where there are any (SmolLM2 has none): a journal of windows without <bos> is another search.
        identity["leading_tokens"] = list(prefix)
    return identity


def replay_journal(engine: PerplexityEngine, journal: Journal | None, world: World) -> float:
    """Fill the engine's cache with the journal's scores (rank 0 reads, the others receive); earlier seconds."""
    entries = journal.entries if journal else {}
    window_values = {
        key: WindowValues(tuple(e["window_nll"]), tuple(e["window_whole"]) if "window_whole" in e else None)
        for key, e in entries.items()
        if "window_nll" in e  # journals written before racing existed have none
    }
    raced = {key: int(e["raced_after_windows"]) for key, e in entries.items() if "raced_after_windows" in e}
    replay = [journal.scores() if journal else {}, journal.elapsed() if journal else 0.0, window_values, raced]
    if world.size > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(replay, src=0)
    engine.cache.update(replay[0])
    engine.window_values.update(replay[2])
    engine.raced.update(replay[3])
    return replay[1]


class JournalRecorder:
    """The engine's ``on_result``: appends each new score to the journal (rank 0) and reports progress."""

    def __init__(
        self,
        journal: Journal | None,
        short: bool,
        began: float,
        earlier: float,
        expected: int,
        engine: PerplexityEngine,
        on_progress: Callable[[int, int, float], None] | None,
        search_attention: bool = False,
    ) -> None:
        self.journal, self.short, self.began, self.earlier = journal, short, began, earlier
        self.search_attention = search_attention
        self.engine = engine
        self.expected, self.on_progress = expected, on_progress
        self.best = min(engine.cache.values(), default=math.inf)
        if on_progress is not None and journal is not None:
            on_progress(len(journal.entries), expected, self.best)

    def __call__(self, key: str, scaling: RopeScaling, score: float) -> None:
        self.best = min(self.best, score)
        if self.journal is None:
            return
        vector = scaling.short_factors if self.short else scaling.factors
        record: dict[str, Any] = {
            "factors": list(vector),
            "start_tokens": scaling.start_tokens,
            **({"attention_factor": scaling.attention_factor} if self.search_attention else {}),
            "elapsed": round(self.earlier + time.perf_counter() - self.began, 3),
        }
        # Per-window sums: what a resumed racing search compares later candidates with.
        values = self.engine.window_values[key]
        record["window_nll"] = list(values.nll)
        if values.whole is not None:
            record["window_whole"] = list(values.whole)
        if key in self.engine.raced:
            record["raced_after_windows"] = self.engine.raced[key]
        self.journal.append(key, record, score)
        if self.on_progress is not None:
            self.on_progress(len(self.journal.entries), self.expected, self.best)


# ------------------------------------------------------------------------------------------- searcher
def run_searcher(
    plan: SearchPlan, space: SearchSpace, objective: BudgetedObjective, seed: int
) -> tuple[RopeScaling, float]:
    """The searcher's best scaling and its score; under --budget, the best of what the budget scored."""
    try:
        result = plan.searcher.run(objective, space, plan.params, seed)
        return objective.to_scaling(result.best), result.score
    except BudgetReached:
        candidate, score = objective.best_scored()
        return objective.to_scaling(candidate), score


# ----------------------------------------------------------------------------------------- provenance
def provenance(
    request: SearchRequest,
    plan: SearchPlan,
    space: SearchSpace,
    engine: PerplexityEngine,
    replayed: int,
    stopped_by_budget: bool,
    seconds: float,
    score: float,
    devices: list[str],
    world: World,
) -> dict[str, Any]:
    """The provenance keys of a searched scaling (their names and order are part of the YAML format)."""
    return dict(
        searcher=plan.searcher.name,
        params=asdict(plan.params),
        objective=plan.objective.provenance_name if plan.objective is not None else "perplexity",
        corpus=request.corpus,
        lengths={"window": plan.window_length, "target": request.target_length},
        samples=request.samples,
        skip_docs=request.skip_docs,
        evaluations=len(engine.cache),
        replayed_evaluations=replayed,
        stopped_by_budget=stopped_by_budget,
        seconds=round(seconds, 1),
        score=score,
        seed=request.seed,
        model=request.model,
        ropext_version=__version__,
        devices=devices,
        processes=world.size,
        attention=plan.attention_spec,
        **({"attention_searched_from": plan.attention} if plan.search_attention else {}),
        started_from=str(request.start_from) if request.start_from else None,
        short_search=plan.short,
        critical_floor=space.floors is not None,
        **racing_provenance(request, engine),
    )


def racing_provenance(request: SearchRequest, engine: PerplexityEngine) -> dict[str, Any]:
    """What racing adds to the provenance (nothing under --no-race: its YAML stays as it was before racing)."""
    racing = request.racing()
    if racing is None:
        return {}
    windows = engine.windows.shape[0]
    return {
        "racing": {
            **racing.identity(),
            "raced_out": len(engine.raced),
            "window_evaluations_saved": sum(windows - seen for seen in engine.raced.values()),
        }
    }


def objective_provenance(plan: SearchPlan, scored: ObjectiveWindows) -> dict[str, Any]:
    """What a non-default objective adds to the provenance (nothing for ppl: its YAML stays as it was)."""
    if plan.objective is None or plan.objective.name == DEFAULT_OBJECTIVE:
        return {}
    details = dict(scored.details)
    if scored.answer_lengths is not None:
        details["answer_tokens"] = list(scored.answer_lengths)
    return {"objective_details": details}
