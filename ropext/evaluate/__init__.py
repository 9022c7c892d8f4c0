"""Evaluation tasks, registered by name (``ropext ls`` lists them)."""

from ropext.registry import Registry

TASKS: Registry = Registry("task")
TASKS.register("ppl", "ropext.evaluate.ppl:evaluate_perplexity", "perplexity on long documents (truncated or sliding)")
TASKS.register("passkey", "ropext.evaluate.passkey:evaluate_passkey", "pass-key retrieval at lengths and depths")
TASKS.register("ruler", "ropext.evaluate.ruler.run:evaluate_ruler", "RULER: needles, variable tracking, words, QA")
