"""LongRoPE's evolutionary search (Ding et al.; microsoft/LongRoPE) of monotone factors and n̂.

Individuals are non-decreasing factor vectors on a 0.01 grid in [1, 1.25·s] plus n̂ from a fixed
set; with the critical floor (``SearchSpace.floors``, on by default in ``ropext search``) the pairs
that never turn within the original context stay at s or above. The first population holds the seed
vectors (the --from file, PI, NTK, YaRN) and mutations of them; every iteration keeps the best
``parents`` and adds ``mutations`` mutants and ``crossovers`` children, each new (never evaluated
before) and monotone.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ropext.errors import RopextError
from ropext.search.base import SEED_METHODS, Candidate, Objective, SearchResult, SearchSpace

START_TOKEN_CHOICES = (0, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 64, 128, 256)
_TRIES = 200


@dataclass(frozen=True)
class LongRopeParams:
    population: int = 64
    """Size of the first population."""
    iterations: int = 40
    """Generations after the first population."""
    parents: int = 32
    """Best individuals kept each generation."""
    mutations: int = 16
    """Mutants per generation."""
    crossovers: int = 16
    """Crossover children per generation."""
    step: float = 0.01
    """Grid of factor values."""
    max_ratio: float = 1.25
    """Factors lie in [1, max_ratio · s]."""
    mutation_prob: float = 0.3
    """Chance that a mutant resamples each value (between its neighbours)."""
    crossover_prob: float = 0.3
    """Chance that a child takes each value from its second parent."""
    search_start_tokens: bool = True
    """Search n̂ too (from 0, 1, 2, 4, …, 256); off: n̂ = 0."""
    early_stop: int = 0
    """Stop when the best score improved by less than ``early_stop_gain`` over this many generations
    (0: run every generation)."""
    early_stop_gain: float = 0.001


class _Grid:
    def __init__(self, step: float, low: float, high: float) -> None:
        self.step, self.low, self.high = step, low, high
        self.top = round((high - low) / step)

    def index(self, value: float) -> int:
        return min(max(round((value - self.low) / self.step), 0), self.top)

    def value(self, index: int) -> float:
        return round(self.low + index * self.step, 10)


def _monotone(indices: list[int]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(indices))


class LongRope:
    name = "longrope"
    params = LongRopeParams
    # LongRoPE's code scales attention by sqrt(1 + ln s / ln L0).
    default_attention = "longrope"
    start_token_choices = START_TOKEN_CHOICES

    def seed_methods(self, params: LongRopeParams) -> tuple[str, ...]:
        return SEED_METHODS

    def batch_hint(self, params: LongRopeParams) -> int:
        """Candidates scored per objective call (a generation's children)."""
        return params.mutations + params.crossovers

    def expected_evaluations(self, space: SearchSpace, params: LongRopeParams) -> int:
        return params.population + params.iterations * (params.mutations + params.crossovers)

    def run(
        self,
        objective: Objective,
        space: SearchSpace,
        params: LongRopeParams,
        seed: int,
        on_step: Callable[[float], None] | None = None,
    ) -> SearchResult:
        if params.parents < 2 or params.population < params.parents:
            raise RopextError("longrope needs parents >= 2 and population >= parents")
        rng = random.Random(seed)
        grid = _Grid(params.step, 1.0, params.max_ratio * space.scale)
        # Rounded up, so that a floor between grid points is never undercut.
        floor = [min(math.ceil((space.floor(i) - 1.0) / params.step - 1e-9), grid.top) for i in range(space.pairs)]
        choices = tuple(space.start_tokens_choices) if params.search_start_tokens else (0,)
        scores: dict[tuple[tuple[int, ...], int], float] = {}

        def as_candidate(individual: tuple[tuple[int, ...], int]) -> Candidate:
            return Candidate(tuple(grid.value(i) for i in individual[0]), individual[1])

        def evaluate(
            individuals: list[tuple[tuple[int, ...], int]], bound: tuple[tuple[int, ...], int] | None = None
        ) -> None:
            fresh = [ind for ind in dict.fromkeys(individuals) if ind not in scores]
            if not fresh:
                return
            values = objective(
                [as_candidate(ind) for ind in fresh], bound=as_candidate(bound) if bound is not None else None
            )
            scores.update(zip(fresh, values, strict=True))

        def mutate(parent: tuple[tuple[int, ...], int]) -> tuple[tuple[int, ...], int] | None:
            for _ in range(_TRIES):
                child = list(parent[0])
                for i in range(len(child)):
                    if rng.random() < params.mutation_prob:
                        lo = max(child[i - 1] if i > 0 else 0, floor[i])
                        hi = parent[0][i + 1] if i + 1 < len(child) else grid.top
                        child[i] = rng.randint(lo, max(lo, hi))
                start = rng.choice(choices) if rng.random() < params.mutation_prob else parent[1]
                candidate = (tuple(child), start)
                if _monotone(child) and candidate not in scores and candidate != parent:
                    return candidate
            return None

        def crossover(first, second) -> tuple[tuple[int, ...], int] | None:
            for _ in range(_TRIES):
                child = [
                    b if rng.random() < params.crossover_prob else a for a, b in zip(first[0], second[0], strict=True)
                ]
                start = second[1] if rng.random() < params.crossover_prob else first[1]
                candidate = (tuple(child), start)
                if _monotone(child) and candidate not in scores:
                    return candidate
            return mutate(first)

        seeds = []
        for vector in space.initial:
            indices = [max(grid.index(x), floor[i]) for i, x in enumerate(vector)]
            for i in range(1, len(indices)):  # the grid and the bounds may break monotonicity; restore it
                indices[i] = max(indices[i], indices[i - 1])
            seeds.append((tuple(indices), 0))
        population = list(dict.fromkeys(seeds))
        while len(population) < params.population:
            child = mutate(population[rng.randrange(len(seeds))])
            if child is None:
                break
            if child not in population:
                population.append(child)
        evaluate(population)
        requested = len(population)
        best_history = [min(scores[p] for p in population)]
        if on_step is not None:
            on_step(best_history[-1])

        for _ in range(params.iterations):
            ranked = sorted(population, key=lambda ind: (scores[ind], ind))
            parents = ranked[: params.parents]
            children: list[tuple[tuple[int, ...], int]] = []
            for _ in range(params.mutations):
                child = mutate(parents[rng.randrange(len(parents))])
                if child is not None and child not in children:
                    children.append(child)
            for _ in range(params.crossovers):
                first, second = rng.sample(parents, 2)
                child = crossover(first, second)
                if child is not None and child not in children:
                    children.append(child)
            # A child worse than the worst parent is outranked by all `parents` of them and never survives
            # selection (with fewer parents than that, every child survives: no bound).
            evaluate(children, bound=parents[-1] if len(parents) == params.parents else None)
            requested += len(children)
            population = parents + children
            best_history.append(min(scores[p] for p in population))
            if on_step is not None:
                on_step(best_history[-1])
            window = params.early_stop
            if (
                window
                and len(best_history) > window
                and best_history[-window - 1] - best_history[-1] < params.early_stop_gain
            ):
                break

        best = min(scores, key=lambda ind: (scores[ind], ind))
        candidate = Candidate(tuple(grid.value(i) for i in best[0]), best[1])
        return SearchResult(candidate, scores[best], requested, best_history, asdict(params))


LONGROPE = LongRope()
