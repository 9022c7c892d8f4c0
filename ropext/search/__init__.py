"""Perplexity-guided searchers, registered by name (``ropext ls`` lists them)."""

from ropext.registry import Registry

SEARCHERS: Registry = Registry("searcher")
