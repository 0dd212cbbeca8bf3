"""The ``eval`` stage of ``compactlm run``: every model of the run scored on the same held-out data and tasks.

Rows, in order: the teacher, the corrected teacher, each step's prune (not retrained) and its
student, then the exported GGUF files when the recipe scores them (see :mod:`.gguf_stage`).
Every row also holds the greedy continuations of ``eval.prompts`` and their distinct-2
(:mod:`compactlm.evaluate.generation`).
"""

from __future__ import annotations

import logging
import math

import torch

from ..evaluate import evaluate
from ..evaluate.generation import greedy_continuations, mean_distinct
from ..hardware import precision_for
from ..importance import lm_loss
from ..io import write_json_atomic
from ..summary import describe
from .gguf_stage import gguf_entries, loader_mismatch
from .records import (
    CORRECTION,
    DISTILL,
    EXPORT,
    PRUNE,
    CorrectionRecord,
    DistillRecord,
    EvalRecord,
    EvalRow,
    PruneRecord,
    RunState,
    stage_key,
)
from .run_dir import RunLayout
from .schema import Recipe

logger = logging.getLogger(__name__)

# Per-task numbers that describe the protocol rather than score the model.
NOT_SCORES = ("windows", "tokens", "window", "stride", "nll")


def eval_stage(recipe: Recipe, layout: RunLayout, done: RunState, models, tokenizer, heldout: torch.Tensor) -> EvalRecord:
    """Teacher, then every step's prune (not retrained) and student: held-out perplexity and the recipe's tasks.

    ``models.get(path)`` gives a loaded model; ``heldout`` is (N, T) token blocks. Writes ``eval.json``.
    """
    entries = [("teacher", recipe.teacher)]
    if CORRECTION in done.stages:
        entries.append(("teacher (corrected)", done.get(CORRECTION, CorrectionRecord).model))
    for step in recipe.steps:
        entries += [(f"{step.name}: pruned", done.get(stage_key(step.name, PRUNE), PruneRecord).model),
                    (f"{step.name}: distilled", done.get(stage_key(step.name, DISTILL), DistillRecord).model)]
    entries += gguf_entries(recipe, done.stages.get(EXPORT))
    e = recipe.eval
    rows: list[EvalRow] = []
    for label, path in entries:
        if any(r.path == path for r in rows):   # distill.tokens 0: the student is the prune
            continue
        model = models.get(path)
        info = describe(model)
        skip = loader_mismatch(label, info, rows)
        if skip:
            logger.warning("eval %s: skipped: %s", label, skip)
            continue
        precision = precision_for(e.precision or recipe.precision, model)
        loss = lm_loss(model, heldout, e.batch_size, precision.bf16)
        metrics = {"heldout_ppl": math.exp(min(loss, 50.0))}
        tasks = evaluate(model, tokenizer, e, bf16=precision.bf16) if e.tasks else {"results": {}}
        for task, out in tasks["results"].items():
            for metric, value in out["metrics"].items():
                if isinstance(value, (int, float)) and metric not in NOT_SCORES and not metric.endswith("_stderr"):
                    metrics[f"{task} {metric}"] = value
        continuations = greedy_continuations(model, tokenizer, e.prompts, e.max_new_tokens) if e.prompts else []
        if continuations:
            metrics["distinct_2"] = mean_distinct(continuations, 2)
        rows.append(EvalRow(model=label, path=path, parameters=info["parameters"]["total"],
                            breakdown=info["parameters"], architecture=info["architecture"], metrics=metrics,
                            precision=precision.precision,
                            continuations=[{"prompt": c.prompt, "text": c.text} for c in continuations]))
        logger.info("eval %s: %s", label, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    result = EvalRecord(rows=rows, heldout_blocks=heldout.shape[0], tasks=list(e.tasks), limit=e.limit,
                        window=e.window)
    write_json_atomic(layout.eval, result.eval_json())
    return result
