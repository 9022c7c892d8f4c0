"""Evaluation tasks, registered by name (``ropext ls`` lists them); each entry is a `Task`
(ropext/evaluate/task.py)."""

from ropext.registry import Registry

TASKS: Registry = Registry("task")
TASKS.register("ppl", "ropext.evaluate.ppl:TASK", "perplexity on long documents (truncated or sliding)")
TASKS.register("passkey", "ropext.evaluate.passkey:TASK", "pass-key retrieval at lengths and depths")
TASKS.register("ruler", "ropext.evaluate.ruler.run:TASK", "RULER: needles, variable tracking, words, QA")
