"""``evaluate``: run named tasks on one model and return metrics plus per-example records."""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from pathlib import Path

import numpy as np

from ..config import EvalArgs
from ..data.packaged import is_packaged, packaged_path
from ..errors import CompactLMError
from ..parallel import DistInfo
from ..readers import reading
from .kinds import ChoiceTask, PerplexityTask, TargetTask, Task
from .loglikelihood import score_requests
from .perplexity import perplexity
from .registry import get_task
from .task_data import load_hf_rows, load_rows, read_jsonl

logger = logging.getLogger(__name__)


def select(docs: list[dict], limit: int | None, seed: int = 1234, first_n: bool = False,
           by: str | None = None) -> list[int]:
    """Indices of the docs to evaluate: all, the first ``limit``, or a seeded random ``limit``.

    With ``by`` the limit applies within each value of that field (MMLU subjects). Indices
    are returned in dataset order.
    """
    if limit is None:
        return list(range(len(docs)))
    if limit <= 0:
        raise CompactLMError(f"--limit must be a positive number of examples (got {limit}).")
    pools: dict[object, list[int]] = {}
    for i, d in enumerate(docs):
        pools.setdefault(d[by] if by else None, []).append(i)
    chosen = []
    for key, pool in pools.items():
        if len(pool) <= limit:
            chosen += pool
        elif first_n:
            chosen += pool[:limit]
        else:
            chosen += random.Random(f"{seed}:{key}").sample(pool, limit)
    return sorted(chosen)


def _stderr(values: list[float]) -> float:
    """Standard error of the mean (sample standard deviation / sqrt(n)), as the harness reports."""
    n = len(values)
    return float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def _run_choice(task: ChoiceTask, docs, model, tokenizer, opts) -> tuple[dict, list[dict]]:
    requests, groups, spans = [], [], []
    for i, doc in enumerate(docs):
        reqs = task.requests(doc)
        spans.append((len(requests), len(requests) + len(reqs)))
        requests += reqs
        groups += [i] * len(reqs)
    scores = score_requests(model, tokenizer, requests, groups, desc=task.name, **opts)
    samples, acc, acc_norm = [], [], []
    for doc, (a, b) in zip(docs, spans):
        lls = np.array([s.logprob for s in scores[a:b]])
        lengths = np.array([float(len(c)) for c in task.choices(doc)])   # characters, without the delimiter
        gold = task.gold(doc)
        pred, pred_norm = int(np.argmax(lls)), int(np.argmax(lls / lengths))
        acc.append(float(pred == gold))
        acc_norm.append(float(pred_norm == gold))
        samples.append({"gold": gold, "pred": pred, "pred_norm": pred_norm, "logprobs": lls.tolist(),
                        "lengths": lengths.astype(int).tolist(),
                        **({task.limit_by: doc[task.limit_by]} if task.limit_by else {})})
    metrics = {"acc": float(np.mean(acc)), "acc_stderr": _stderr(acc)}
    if "acc_norm" in task.metrics:
        metrics |= {"acc_norm": float(np.mean(acc_norm)), "acc_norm_stderr": _stderr(acc_norm)}
    if task.limit_by:
        groups_acc: dict[str, list[float]] = {}
        for s, a in zip(samples, acc):
            groups_acc.setdefault(s[task.limit_by], []).append(a)
        metrics[f"acc_by_{task.limit_by}"] = {k: float(np.mean(v)) for k, v in groups_acc.items()}
    return metrics, samples


def _run_target(task: TargetTask, docs, model, tokenizer, opts) -> tuple[dict, list[dict]]:
    requests = [r for doc in docs for r in task.requests(doc)]
    scores = score_requests(model, tokenizer, requests, desc=task.name, **opts)
    lls = [s.logprob for s in scores]
    acc = [float(s.greedy) for s in scores]
    metrics = {"acc": float(np.mean(acc)), "acc_stderr": _stderr(acc), "perplexity": math.exp(-float(np.mean(lls)))}
    return metrics, [{"logprob": s.logprob, "greedy": s.greedy} for s in scores]


def _ppl_text(spec: str, data_dir) -> tuple[str, str]:
    """``ppl:FILE`` (.txt/.raw read whole, .jsonl rows' "text" joined) or ``ppl:DATASET:CONFIG:SPLIT``."""

    target = spec.split(":", 1)[1]
    path = packaged_path(target) if is_packaged(target) else Path(target).expanduser()
    if path.is_file():
        with reading(path, "perplexity text file", "Give a UTF-8 text file, or a .jsonl file with a 'text' field."):
            text = "\n\n".join(r["text"] for r in read_jsonl(path)) if path.suffix == ".jsonl" \
                else path.read_text(encoding="utf-8")
        if not text.strip():
            raise CompactLMError(f"Perplexity text file '{path}' is empty; give a file with text.")
        return text, str(path)
    parts = target.split(":")
    if len(parts) != 3:
        raise CompactLMError(f"Perplexity source '{target}' is not a file, nor DATASET:CONFIG:SPLIT (e.g. "
                             f"ppl:Salesforce/wikitext:wikitext-103-raw-v1:test).")
    rows = load_hf_rows(parts[0], parts[1] or None, parts[2])
    return "\n\n".join(r["text"] for r in rows), target


@contextlib.contextmanager
def eval_mode(model):
    """Dropout off while evaluating; a model that was training goes back to training."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def run_task(name: str, model, tokenizer, options: EvalArgs | None = None, *, bf16: bool = False,
             max_length: int | None = None, rows: tuple[list[dict], str] | None = None,
             parallel: DistInfo | None = None) -> dict:
    """One task's result: ``{"metrics", "n", "source", "seconds"[, "samples"]}``.

    ``options`` (:class:`~compactlm.config.EvalArgs`; its ``tasks`` are not read here) says how
    many examples, which, in what batches and windows; ``bf16`` is the precision already
    resolved for this model (:func:`compactlm.hardware.precision_for` of ``options.precision``).
    ``rows`` (rows, where from), as :func:`~compactlm.evaluate.task_data.load_rows` returns,
    skips loading the data again (two models, one dataset). ``parallel``: under ``torchrun``,
    every process calls this alike; each scores a share of the batches, and every process
    returns the one-process result (metrics and samples bit for bit; ``seconds`` its own).
    """
    with eval_mode(model):
        return _run_task(name, model, tokenizer, options or EvalArgs(), bf16, max_length, rows, parallel)


def _run_task(name, model, tokenizer, o: EvalArgs, bf16: bool, max_length, rows, parallel) -> dict:
    start = time.perf_counter()
    limit, batch_size, window, stride = o.limit, o.batch_size, o.window, o.stride
    if name.startswith("ppl:"):
        text, where = _ppl_text(name, o.data_dir)
        metrics = perplexity(model, tokenizer, text, window=window, stride=stride, batch_size=batch_size,
                             limit=limit, bf16=bf16, desc=name, parallel=parallel)
        return {"metrics": metrics, "n": metrics["windows"], "source": where, "seconds": time.perf_counter() - start}
    task: Task = get_task(name)
    rows, where = rows if rows is not None else load_rows(task.name, task.source, o.data_dir)
    if isinstance(task, PerplexityTask):
        metrics = perplexity(model, tokenizer, task.text(rows), window=window, stride=stride,
                             batch_size=batch_size, limit=limit, bf16=bf16, desc=task.name, parallel=parallel)
        return {"metrics": metrics, "n": metrics["windows"], "source": where, "seconds": time.perf_counter() - start}
    try:
        all_docs = [task.process(r) for r in rows]
    except (KeyError, TypeError, ValueError) as err:
        raise CompactLMError(f"Task '{task.name}': rows from {where} do not have the expected fields "
                             f"({type(err).__name__}: {err}).") from err
    indices = select(all_docs, limit, o.seed, o.first_n, task.limit_by)
    chosen = [all_docs[i] for i in indices]
    opts = dict(batch_size=batch_size, bf16=bf16, share_prefix=o.share_prefix, max_length=max_length, parallel=parallel)
    runner = _run_choice if isinstance(task, ChoiceTask) else _run_target
    metrics, samples = runner(task, chosen, model, tokenizer, opts)
    for i, s in zip(indices, samples):
        s["index"] = i
    return {"metrics": metrics, "n": len(chosen), "source": where, "seconds": time.perf_counter() - start,
            "samples": samples}


def evaluate(model, tokenizer, options: EvalArgs | None = None, *, bf16: bool = False,
             max_length: int | None = None, samples: bool = False, parallel: DistInfo | None = None) -> dict:
    """Evaluate ``model`` on each task of ``options`` (:class:`~compactlm.config.EvalArgs`, passed whole).

    ``options.tasks`` are registered names (``compactlm.evaluate.available_tasks()``) or
    ``ppl:FILE`` / ``ppl:DATASET:CONFIG:SPLIT`` for the perplexity of any text; ``limit`` is
    examples per task (per subject for MMLU; windows for perplexity), a seeded random subset
    unless ``first_n``, which takes the first ones like lm-eval's ``--limit``; ``window`` and
    ``stride`` the perplexity window length and step (tokens); ``share_prefix`` runs a
    question's shared context once for all its options; ``data_dir`` the folder of local task
    files (default ``$COMPACTLM_DATA_DIR``). ``bf16``: bfloat16 autocast (the precision already
    resolved). ``samples`` keeps per-example records (``pred``, ``gold``, log-likelihoods).
    ``parallel``: under ``torchrun``, this process's DistInfo; see :func:`run_task`.

    Returns:
        ``{"results": {task: {"metrics", "n", "source", "seconds"[, "samples"]}}, "config": {...}}``.
    """
    o = options or EvalArgs()
    for name in o.tasks:  # fail on a typo before any heavy work
        if not name.startswith("ppl:"):
            get_task(name)
    results = {}
    for name in o.tasks:
        logger.info("evaluating %s", name)
        out = run_task(name, model, tokenizer, o, bf16=bf16, max_length=max_length, parallel=parallel)
        if not samples:
            out.pop("samples", None)
        results[name] = out
    config = {"limit": o.limit, "seed": o.seed, "first_n": o.first_n, "batch_size": o.batch_size, "bf16": bf16,
              "window": o.window, "stride": o.stride or o.window, "share_prefix": o.share_prefix}
    return {"results": results, "config": config}
