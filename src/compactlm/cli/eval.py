"""Verb ``eval``: perplexity and zero-shot tasks, optionally side by side with a baseline."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from ..config import EvalArgs
from ..errors import CompactLMError
from ..evaluate import available_tasks, get_task, run_task
from ..evaluate.task_data import default_data_dir, load_rows
from ..hardware import precision_for
from ..io import check_output_file, write_json_atomic
from ..parallel import barrier
from .common import add_model_args, model_from_args
from .flags import add_flags, from_flags
from .parallel import join_processes

logger = logging.getLogger(__name__)

# metrics shown in the table, in order; accuracies print as percentages
SHOWN = ("ppl", "acc", "acc_norm", "perplexity")
# the first key of every --json file: a rerun may replace a file that has it, and nothing else without --overwrite
FORMAT = "compactlm.eval/1"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="perplexity and zero-shot tasks (lm-evaluation-harness definitions)",
        description="Evaluate a model on WikiText-2 perplexity and zero-shot tasks with lm-evaluation-harness's "
                    "prompts and metrics; with --baseline, print baseline | model | difference.")
    add_model_args(p)
    p.add_argument("--baseline", help="a second model (e.g. the teacher) evaluated on the same examples")
    p.add_argument("--list-tasks", action="store_true", help="print the registered tasks and exit")
    add_flags(p.add_argument_group("evaluation"), EvalArgs)
    p.add_argument("--bf16", action="store_const", const="bf16", dest="precision",
                   help="same as --precision bf16 (kept for one release)")
    p.add_argument("--json", dest="json_out", help="write all results (and per-example records) to this file; an "
                                                   "earlier eval's file there is replaced, any other file needs "
                                                   "--overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file that eval did not write")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> EvalArgs:
    """The evaluation options, with every problem (flag values, unknown tasks) reported at once."""

    problems, options = [], None
    try:
        options = from_flags(EvalArgs, args)
    except CompactLMError as err:
        problems.append(str(err).rstrip("."))
    if options is not None and options.stride is not None and options.stride > options.window:
        problems.append(f"--stride {options.stride} is longer than --window {options.window}: expected 0 < stride <= window")
    if not args.tasks:
        problems.append("--tasks is empty")
    for name in args.tasks:
        if not name.startswith("ppl:"):
            try:
                get_task(name)
            except CompactLMError as err:
                problems.append(str(err))
    if problems:
        raise CompactLMError("; ".join(problems))
    return options


def is_eval_json(path: Path) -> bool:
    """True for a file an earlier ``compactlm eval --json`` wrote (``"format": "compactlm.eval/1"``). Only a file whose
    first bytes name the format is parsed, so a large foreign file is never read whole."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(256)
            if FORMAT.encode() not in head:
                return False
            data = json.loads(head + fh.read())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def _inputs(args: argparse.Namespace, options: EvalArgs) -> list:
    """What eval reads from disk: the models, the task data folder and every ``ppl:FILE``; --json may be none of
    them nor lie inside one."""
    texts = [name.split(":", 1)[1] for name in options.tasks if name.startswith("ppl:")]
    return [args.model, args.baseline, default_data_dir(options.data_dir), *texts]


def _evaluate(name: str, args, options: EvalArgs, rows: dict, parallel=None) -> dict:
    model, tokenizer = model_from_args(args, name)
    bf16 = precision_for(options.precision, model).bf16
    start = time.perf_counter()
    results = {}
    for task in options.tasks:
        results[task] = run_task(task, model, tokenizer, options, bf16=bf16, rows=rows.get(task), parallel=parallel)
    logger.info("%s: evaluated in %.1f s", name, time.perf_counter() - start)
    return results


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}" if metric.startswith("acc") else f"{value:.3f}"


def _table(tasks: list[str], columns: list[tuple[str, dict]]) -> str:
    head = ["task", "metric", "n"] + [title for title, _ in columns] + (["diff"] if len(columns) == 2 else [])
    lines = []
    for task in tasks:
        first = columns[0][1][task]
        for metric in SHOWN:
            if metric not in first["metrics"]:
                continue
            values = [res[task]["metrics"].get(metric) for _, res in columns]
            label = metric
            if metric == "ppl":
                label = f"ppl@{first['metrics']['window']}"
            elif metric.startswith("acc"):
                label += " %"
            row = [task, label, str(first["n"])] + [_fmt(metric, v) for v in values]
            if len(columns) == 2:
                d = None if None in values else values[1] - values[0]
                row.append("-" if d is None else (f"{100 * d:+.2f}" if metric.startswith("acc") else f"{d:+.3f}"))
            lines.append(row)
    widths = [max(len(r[i]) for r in [head] + lines) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in lines])


def run(args: argparse.Namespace) -> int:
    if args.list_tasks:
        for name in available_tasks():
            print(f"{name:16s} {get_task(name).description}")
        return 0
    options = _check(args)
    parallel = join_processes(args)   # torchrun: each process scores a share of every task's batches
    tasks = options.tasks
    if args.json_out:   # before any work: the results must have somewhere to go
        check_output_file(args.json_out, inputs=_inputs(args, options), overwrite=args.overwrite, ours=is_eval_json)
    # find every task's data before loading any model: a missing source fails in seconds
    rows = {}
    for name in tasks:
        if not name.startswith("ppl:"):
            task = get_task(name)
            rows[name] = load_rows(task.name, task.source, options.data_dir)
    model_results = _evaluate(args.model, args, options, rows, parallel)
    columns = [(args.model, model_results)]
    baseline_results = None
    if args.baseline:
        baseline_results = _evaluate(args.baseline, args, options, rows, parallel)
        columns = [(args.baseline, baseline_results), (args.model, model_results)]
    if not parallel.is_main:   # every process holds the same results; rank 0 prints and writes
        barrier(parallel)
        return 0
    print(_table(tasks, columns))
    seconds = sum(r["seconds"] for r in model_results.values())
    print(f"\n{args.model}: {seconds:.1f} s" + (" (accuracies in %, diff = model - baseline)" if args.baseline else ""))
    if args.json_out:
        out = {"format": FORMAT, "model": args.model, "baseline": args.baseline,
               "config": {**{k: getattr(options, k) for k in ("tasks", "limit", "first_n", "seed", "batch_size",
                                                              "precision", "window", "stride")},
                          "dtype": args.dtype, "device": args.device},
               "results": {"model": model_results, **({"baseline": baseline_results} if baseline_results else {})}}
        write_json_atomic(args.json_out, out)
        print(f"wrote {args.json_out}")
    barrier(parallel)
    return 0
