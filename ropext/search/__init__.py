"""Perplexity-guided searchers, registered by name (``ropext ls`` lists them).

A searcher sees only an objective ``f(list[Candidate]) -> list[float]`` (lower is better), so it
is tested on toy objectives in milliseconds and run for real on the perplexity engine.
"""

from ropext.registry import Registry

SEARCHERS: Registry = Registry("searcher")
SEARCHERS.register("dcis", "ropext.search.dcis:DCIS", "divide-and-conquer incremental search of per-pair factors")
SEARCHERS.register(
    "longrope", "ropext.search.longrope:LONGROPE", "LongRoPE evolutionary search of monotone factors and n̂"
)
