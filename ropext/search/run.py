"""``ropext search`` with a perplexity-guided searcher: windows, engine, journal, searcher, YAML."""

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
from ropext.data.tokenized import tokenize_corpus
from ropext.errors import RopextError
from ropext.methods import METHODS
from ropext.model.layout import RotaryLayout
from ropext.model.loading import ModelSource, load_model, load_tokenizer, resolve_dtype
from ropext.scaling import RopeScaling
from ropext.search import SEARCHERS
from ropext.search.base import Candidate, SearchSpace
from ropext.search.engine import EngineOptions, PerplexityEngine, scaling_key
from ropext.search.journal import Journal
from ropext.search.longrope import START_TOKEN_CHOICES

# The attention factor a searched vector carries, by searcher. LongRoPE's code uses
# sqrt(1 + ln s / ln L0); DCIS starts from YaRN, whose 0.1 ln s + 1 it keeps.
DEFAULT_ATTENTION = {"dcis": "yarn", "longrope": "longrope"}


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


class BudgetReached(Exception):
    pass


def attention_factor(spec: str, scale: float, original: int) -> float:
    if spec == "yarn":
        return 1.0 if scale <= 1 else 0.1 * math.log(scale) + 1.0
    if spec == "longrope":
        return 1.0 if scale <= 1 else math.sqrt(1 + math.log(scale) / math.log(original))
    if spec == "none":
        return 1.0
    try:
        value = float(spec)
    except ValueError:
        raise RopextError(f"--attention-factor {spec!r}: use yarn, longrope, none or a positive number") from None
    if not value > 0:
        raise RopextError(f"--attention-factor must be positive, got {value}")
    return value


def search_windows(tokenizer: Any, request: SearchRequest, length: int) -> torch.Tensor:
    """The first ``length`` tokens of ``samples`` documents at least ``length`` long (after skip_docs)."""
    corpus = tokenize_corpus(tokenizer, open_corpus(request.corpus))
    documents = corpus.require(length, what="search")[request.skip_docs :]
    if len(documents) < request.samples:
        raise RopextError(
            f"corpus {request.corpus} has {len(documents)} documents of {length}+ tokens after skipping "
            f"{request.skip_docs}; the search needs --samples {request.samples}: lower --samples or add documents"
        )
    rows = [torch.from_numpy(corpus.document(d)[:length].astype("int64")) for d in documents[: request.samples]]
    return torch.stack(rows)


def resolve_devices(devices: Sequence[str]) -> list[str]:
    if devices:
        for device in devices:
            if device.startswith("cuda") and not torch.cuda.is_available():
                raise RopextError(f"--devices {device}: no CUDA device is visible")
        return list(devices)
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def run_search(
    request: SearchRequest,
    source: ModelSource,
    layout: RotaryLayout,
    journal_path: Path,
    on_progress: Callable[[int, int, float], None] | None = None,
) -> RopeScaling:
    """Search, journaling every evaluation; returns the best scaling with its provenance."""
    searcher = SEARCHERS.get(request.searcher)
    params = _parse(searcher, request.params)
    began = time.perf_counter()
    base = RopeScaling.load(request.start_from) if request.start_from else None
    if base is not None:
        base.check_matches(layout, source=str(request.start_from))
    short = request.short_length is not None
    if short and request.short_length < 2:
        raise RopextError(f"--short-length must be at least 2 tokens, got {request.short_length}")
    if request.skip_docs < 0:
        raise RopextError(f"--skip-docs must be 0 or more, got {request.skip_docs}")
    if short and request.short_length > layout.original_max_position_embeddings:
        raise RopextError(
            f"--short-length {request.short_length} must not exceed the original context "
            f"{layout.original_max_position_embeddings}: short factors serve inputs up to it"
        )
    if short and base is None:
        raise RopextError("--short-length searches the short factors of --from FILE; give --from with the long factors")
    window_length = request.short_length if short else request.target_length
    scale = request.target_length / layout.original_max_position_embeddings
    attention_spec = request.attention or DEFAULT_ATTENTION.get(searcher.name, "none")
    attention = (
        base.attention_factor
        if short and base is not None
        else attention_factor(attention_spec, scale, layout.original_max_position_embeddings)
    )

    def to_scaling(candidate: Candidate) -> RopeScaling:
        # A short-factor search varies --from's short vector and keeps its long factors and n̂.
        long, start_tokens = (base.factors, base.start_tokens) if short else (candidate.factors, candidate.start_tokens)
        return RopeScaling(
            method=searcher.name,
            rope_theta=layout.rope_theta,
            rotary_dim=layout.rotary_dim,
            original_max_position_embeddings=layout.original_max_position_embeddings,
            max_position_embeddings=request.target_length,
            factors=long,
            short_factors=candidate.factors if short else None,
            attention_factor=attention,
            start_tokens=start_tokens,
        )

    space = _space(layout, request, base, short, params)
    rank, world = join_launched_processes()
    # Under torchrun each process drives the GPU of its local rank; alone, every --devices GPU.
    devices = [launched_device()] if world > 1 else resolve_devices(request.devices)
    tokenizer = load_tokenizer(source)
    windows = search_windows(tokenizer, request, window_length)
    identity = {
        "model": request.model,
        "layout": asdict(layout) | {"name": None},
        "corpus": request.corpus,
        "corpus_fingerprint": open_corpus(request.corpus).fingerprint,
        "window_length": window_length,
        "samples": request.samples,
        "skip_docs": request.skip_docs,
        "target_length": request.target_length,
        "searcher": searcher.name,
        "params": asdict(params),
        "seed": request.seed,
        "attention_factor": attention,
        "short": short,
        "from": base.to_dict() if base is not None else None,
    }
    if space.floors is not None:
        # Only when on: journals written before the floor existed resume under --no-critical-floor.
        identity["critical_floor"] = True
    replicas = []
    for device in devices:
        model = load_model(source, device=device, dtype=resolve_dtype(request.dtype, device))
        replicas.append((model, device))
    # Only now that everything loaded: a run that fails before this leaves no journal behind.
    # Only rank 0 keeps the journal; the others receive its scores, so every process retraces the same steps.
    journal = Journal(journal_path, identity) if rank == 0 else None
    unscaled = METHODS.get("none")(layout, layout.original_max_position_embeddings)
    engine_options = replace(request.engine, candidates_per_batch=searcher.batch_hint(params))
    engine = PerplexityEngine(replicas, windows, unscaled, engine_options)
    replay = [journal.scores() if journal else {}, journal.elapsed() if journal else 0.0]
    if world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(replay, src=0)
    engine.cache.update(replay[0])
    replayed = len(engine.cache)
    earlier = replay[1]  # seconds spent by earlier, interrupted runs of this search
    expected = searcher.expected_evaluations(space, params)
    if request.budget is not None:
        expected = min(expected, request.budget)  # what the progress bar counts to: the budget stops it there
    best = [min(engine.cache.values(), default=math.inf)]

    def record(key: str, scaling: RopeScaling, score: float) -> None:
        best[0] = min(best[0], score)
        if journal is None:
            return
        vector = scaling.short_factors if short else scaling.factors
        journal.append(
            key,
            {
                "factors": list(vector),
                "start_tokens": scaling.start_tokens,
                "elapsed": round(earlier + time.perf_counter() - began, 3),
            },
            score,
        )
        if on_progress is not None:
            on_progress(len(journal.entries), expected, best[0])

    engine.on_result = record
    if on_progress is not None and journal is not None:
        on_progress(len(journal.entries), expected, best[0])
    candidates_seen: dict[str, Candidate] = {}

    def objective(candidates: Sequence[Candidate]) -> list[float]:
        scalings = [to_scaling(c) for c in candidates]
        keys = [scaling_key(s) for s in scalings]
        candidates_seen.update(zip(keys, candidates, strict=True))
        if request.budget is not None:
            new = list(dict.fromkeys(k for k in keys if k not in engine.cache))
            room = request.budget - len(engine.cache)
            if len(new) > room:
                # Spend the budget exactly: score the first candidates that fit, then stop.
                chosen = {k: s for k, s in zip(keys, scalings, strict=True) if k in set(new[: max(room, 0)])}
                if chosen:
                    engine(list(chosen.values()), list(chosen))
                raise BudgetReached
        return engine(scalings, keys)

    stopped_by_budget = False
    try:
        result = searcher.run(objective, space, params, request.seed)
        winner, score = to_scaling(result.best), result.score
    except BudgetReached:
        stopped_by_budget = True
        scored = [k for k in candidates_seen if k in engine.cache]
        if not scored:
            raise RopextError("--budget must allow at least one evaluation") from None
        key = min(scored, key=lambda k: (engine.cache[k], k))
        winner, score = to_scaling(candidates_seen[key]), engine.cache[key]
    finally:
        if journal is not None:
            journal.close()
    seconds = earlier + time.perf_counter() - began  # the whole search, over all its runs
    return winner.with_provenance(
        searcher=searcher.name,
        params=asdict(params),
        objective="perplexity",
        corpus=request.corpus,
        lengths={"window": window_length, "target": request.target_length},
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
        processes=world,
        attention=attention_spec,
        started_from=str(request.start_from) if request.start_from else None,
        short_search=short,
        critical_floor=space.floors is not None,
    )


def join_launched_processes() -> tuple[int, int]:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); (rank, world size)."""
    import os

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_device() -> str:
    import os

    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


def _parse(searcher: Any, pairs: Sequence[str]) -> Any:
    from ropext.methods.base import parse_params

    return parse_params(searcher.params, pairs, where=f"searcher {searcher.name!r}")


def _space(
    layout: RotaryLayout, request: SearchRequest, base: RopeScaling | None, short: bool, params: Any
) -> SearchSpace:
    if short:
        scale = max(request.short_length / layout.original_max_position_embeddings, 1.0)
        initial = [tuple([1.0] * layout.pairs)]
        if base is not None and base.short_factors is not None:
            initial.insert(0, base.short_factors)
        return SearchSpace(layout.pairs, scale, tuple(initial), (0,))
    scale = request.target_length / layout.original_max_position_embeddings
    seeds = []
    if base is not None:
        seeds.append(base.factors)
    init = getattr(params, "init", None)
    names = [init] if init else []
    names += [n for n in ("pi", "ntk", "yarn") if n not in names]
    for name in names:
        method = METHODS.get(name)
        seeds.append(method.run(layout, request.target_length, method.params()).factors)
    floors = None
    if request.critical_floor:
        l0 = layout.original_max_position_embeddings
        floors = critical_floors(layout.rope_theta, layout.rotary_dim, l0, scale)
    return SearchSpace(layout.pairs, scale, tuple(seeds), START_TOKEN_CHOICES, floors)
