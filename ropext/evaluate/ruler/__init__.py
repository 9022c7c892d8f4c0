"""RULER (Hsieh et al. 2024, NVIDIA/RULER): 13 synthetic long-context tasks, generated here in the model's
own tokens. ``tasks`` draws each sample, ``prompts`` fits its haystack into a length, ``scoring`` grades the
answers as RULER does, ``run`` evaluates a model (``ropext eval ruler``). docs/ruler.md describes the choices.
"""

from ropext.evaluate.ruler.tasks import ALL_TASKS, QA_TASKS, parse_tasks

__all__ = ["ALL_TASKS", "QA_TASKS", "parse_tasks"]
