"""Evaluation tasks, registered by name; adding one is one definition plus ``register(...)``.

Three kinds cover the standard suite:

* :class:`ChoiceTask`: pick the option with the highest log-likelihood (``acc``), or the
  highest log-likelihood per character of the option (``acc_norm``), as lm-evaluation-harness
  does. Options go after the context (HellaSwag, ARC, PIQA, BoolQ, MMLU), or, for *partial
  scoring* (Winogrande), each option completes the context and the shared rest of the
  sentence is scored.
* :class:`TargetTask`: one continuation per example; ``acc`` is a greedy exact match and
  ``perplexity`` is ``exp(-mean log-likelihood)`` (LAMBADA).
* :class:`PerplexityTask`: a token stream scored in windows (WikiText-2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import unknown_name
from .loglikelihood import Request
from .sources import DataSource

Doc = dict


@dataclass(frozen=True)
class ChoiceTask:
    name: str
    source: DataSource
    process: Callable[[dict], Doc]            # a source row (any supported layout) -> a doc
    context: Callable[[Doc], str]             # the prompt, without the answer
    choices: Callable[[Doc], list[str]]       # answer texts (scored after target_delimiter)
    gold: Callable[[Doc], int]
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    target_delimiter: str = " "
    # partial scoring: doc -> (one context per option, the shared continuation)
    partial: Callable[[Doc], tuple[list[str], str]] | None = None
    limit_by: str | None = None               # apply --limit within each value of this doc field
    description: str = ""

    def requests(self, doc: Doc) -> list[Request]:
        if self.partial is not None:
            contexts, rest = self.partial(doc)
            return [Request(c, self.target_delimiter + rest) for c in contexts]
        ctx = self.context(doc)
        return [Request(ctx, self.target_delimiter + c) for c in self.choices(doc)]


@dataclass(frozen=True)
class TargetTask:
    name: str
    source: DataSource
    process: Callable[[dict], Doc]
    context: Callable[[Doc], str]
    target: Callable[[Doc], str]              # scored as is (the delimiter is part of it)
    metrics: tuple[str, ...] = ("acc", "perplexity")
    limit_by: str | None = None
    description: str = ""

    def requests(self, doc: Doc) -> list[Request]:
        return [Request(self.context(doc), self.target(doc))]


@dataclass(frozen=True)
class PerplexityTask:
    name: str
    source: DataSource
    text: Callable[[list[dict]], str]         # all rows -> the one text that is tokenised once
    metrics: tuple[str, ...] = ("ppl",)
    description: str = ""


Task = ChoiceTask | TargetTask | PerplexityTask
TASKS: dict[str, Task] = {}
ALIASES = {"lambada": "lambada_openai", "wikitext": "wikitext2"}


def register(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"task '{task.name}' is registered twice")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    from . import tasks  # noqa: F401  (registers the built-in tasks)

    name = ALIASES.get(name, name)
    if name not in TASKS:
        raise unknown_name("task", name, [*TASKS, *ALIASES])
    return TASKS[name]


def available_tasks() -> list[str]:
    from . import tasks  # noqa: F401

    return sorted(TASKS)
