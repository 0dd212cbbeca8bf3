"""The three kinds of evaluation task; each built-in task is one instance (``tasks``, ``mmlu``).

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

from .loglikelihood import Request
from .task_data import DataSource

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
