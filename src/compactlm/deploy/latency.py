"""Measured speed of a candidate shape, cached; budgets, ties and the quality/speed frontier (docs/search.md).

A measurement is ``repeats`` runs of :func:`.runtimes.time_runs`. Each metric is read per run
(``decode_ms``: milliseconds per decoding step; ``decode_tokens_per_s`` and
``prefill_tokens_per_s``: tokens of all sequences per second) and summarised by its median and
its interquartile range (where the middle half of the runs lie). The median decides a budget; the
range decides ties: two shapes whose ranges overlap are equally fast (a noisy machine widens the
ranges and so makes more ties rather than a silently flipped ranking).

Measurements are cached in ``~/.cache/compactlm/latency/`` per shape (the whole config but its
name), runtime settings, runtime build and CPU/GPU model, so a search that runs again, or a
second search over the same shapes, measures nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config.options import LATENCY_BOUNDS, LatencyBudget
from ..hardware import cpu_name
from ..io import cache_dir, write_json_atomic
from .runtimes import Run, runtime_version, time_runs

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1
HIGHER_IS_BETTER = {"decode_ms": False, "decode_tokens_per_s": True, "prefill_tokens_per_s": True}
UNITS = {"decode_ms": "ms/step", "decode_tokens_per_s": "tok/s", "prefill_tokens_per_s": "tok/s"}
# Config keys that do not change what a runtime computes (private "_..." keys are skipped too): names, token ids, labels.
_NOT_SHAPE = ("transformers_version", "architectures", "dtype", "torch_dtype", "quantization_config", "bos_token_id",
              "eos_token_id", "pad_token_id", "unk_token_id", "id2label", "label2id", "problem_type", "initializer_range",
              "output_attentions", "output_hidden_states", "return_dict")


@dataclass(frozen=True)
class Latency:
    """The timed runs of one shape and what they say per metric."""

    runs: tuple[Run, ...]
    batch: int
    prompt: int
    new_tokens: int

    def values(self, metric: str) -> list[float]:
        if metric == "decode_ms":
            return [1000 * r.decode_s / self.new_tokens for r in self.runs]
        if metric == "decode_tokens_per_s":
            return [self.batch * self.new_tokens / r.decode_s for r in self.runs]
        return [self.batch * self.prompt / r.prefill_s for r in self.runs]

    def median(self, metric: str) -> float:
        return statistics.median(self.values(metric))

    def range(self, metric: str) -> tuple[float, float]:
        """The first and third quartiles of the runs: where the middle half of them lie (one outlier cannot widen it)."""
        q1, _, q3 = statistics.quantiles(self.values(metric), n=4, method="inclusive")
        return q1, q3

    def spread(self, metric: str) -> float:
        """Half the interquartile range relative to the median: 0.05 means the middle runs lie within about ±5%."""
        low, high = self.range(metric)
        return (high - low) / 2 / self.median(metric)

    @classmethod
    def from_dict(cls, saved: dict, budget: LatencyBudget) -> "Latency":
        """What :meth:`to_dict` wrote, for the settings of ``budget``."""
        runs = tuple(Run(p, d) for p, d in zip(saved["prefill_s"], saved["decode_s"], strict=True))
        return cls(runs, budget.batch, budget.prompt, budget.new_tokens)

    def to_dict(self) -> dict:
        out = {"repeats": len(self.runs), "prefill_s": [r.prefill_s for r in self.runs],
               "decode_s": [r.decode_s for r in self.runs]}
        for metric in LATENCY_BOUNDS:
            low, high = self.range(metric)
            out[metric] = {"median": self.median(metric), "min": low, "max": high}
        return out


def _shape(config) -> dict:
    return {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k not in _NOT_SHAPE}


def cache_key(config, budget: LatencyBudget) -> str:
    """What decides a timing: the shape, the runtime and its settings, the runtime build and the processor."""
    material = {"format": CACHE_FORMAT, "shape": _shape(config), "runtime": budget.runtime,
                "weights": budget.measured_type, "device": budget.device if budget.runtime == "hf" else "cpu",
                "threads": budget.threads or torch.get_num_threads(), "prompt": budget.prompt, "batch": budget.batch,
                "new_tokens": budget.new_tokens, "build": runtime_version(budget), "cpu": cpu_name()}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _cache_file(key: str) -> Path:
    return cache_dir() / "latency" / f"{key}.json"


def measure(config, budget: LatencyBudget, *, tokenizer_source: Path | None = None, use_cache: bool = True) -> Latency:
    """The latency of ``config``'s shape under ``budget``'s runtime settings: from the cache when it holds at least
    ``budget.repeats`` runs of it, else measured (and cached)."""
    key = cache_key(config, budget)
    path = _cache_file(key)
    if use_cache and path.is_file():
        try:
            saved = Latency.from_dict(json.loads(path.read_text()), budget)
            if len(saved.runs) >= budget.repeats:
                return dataclasses.replace(saved, runs=saved.runs[:budget.repeats])
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("latency cache %s is unreadable; measuring again", path)
    latency = Latency(tuple(time_runs(config, budget, tokenizer_source=tokenizer_source)), budget.batch, budget.prompt,
                      budget.new_tokens)
    if use_cache:
        write_json_atomic(path, latency.to_dict())
    return latency


def meets(latency: Latency, budget: LatencyBudget) -> bool:
    """Every bound of ``budget`` holds for the median run."""
    for metric in LATENCY_BOUNDS:
        bound = getattr(budget, metric)
        if bound is None:
            continue
        value = latency.median(metric)
        if (value < bound) if HIGHER_IS_BETTER[metric] else (value > bound):
            return False
    return True


def shortfall(latency: Latency, budget: LatencyBudget) -> float:
    """How far the median misses the budget, relative (0 when it meets it): the closest candidate has the least."""
    worst = 0.0
    for metric in LATENCY_BOUNDS:
        bound = getattr(budget, metric)
        if bound is not None:
            value = latency.median(metric)
            worst = max(worst, (bound / value - 1) if HIGHER_IS_BETTER[metric] else (value / bound - 1))
    return worst


def tied_ranks(latencies: list[Latency | None], metric: str) -> list[int | None]:
    """Speed ranks (1 = fastest) where shapes whose ranges overlap share a rank.

    Sorted fastest first by median, a shape joins the current rank while its range overlaps the
    range of some shape already in it (a chain), else it opens the next rank.
    """
    sign = -1 if HIGHER_IS_BETTER[metric] else 1     # as a cost: lower is better
    order = sorted((sign * lat.median(metric), i) for i, lat in enumerate(latencies) if lat is not None)
    ranks: list[int | None] = [None] * len(latencies)
    rank, reach = 0, float("-inf")
    for _, i in order:
        low, high = sorted(sign * v for v in latencies[i].range(metric))
        if rank == 0 or low > reach:
            rank += 1
            reach = high
        else:
            reach = max(reach, high)
        ranks[i] = rank
    return ranks


def pareto(quality: list[float], speed_rank: list[int | None]) -> list[bool]:
    """The quality/speed frontier: no other candidate has a lower loss at the same or a better speed rank."""
    return [rank is not None and not any(
        other_rank is not None and other_rank <= rank and (quality[j] < quality[i] or
                                                           (quality[j] == quality[i] and other_rank < rank))
        for j, other_rank in enumerate(speed_rank) if j != i) for i, rank in enumerate(speed_rank)]


__all__ = ["HIGHER_IS_BETTER", "UNITS", "Latency", "cache_key", "measure", "meets", "pareto", "shortfall",
           "tied_ranks"]
