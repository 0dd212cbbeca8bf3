"""Verb ``eval``: perplexity and zero-shot tasks, optionally side by side with a baseline."""

from __future__ import annotations

import argparse
import logging
import time

from .common import add_model_args

logger = logging.getLogger(__name__)

DEFAULT_TASKS = "wikitext2,hellaswag,winogrande,arc_easy,arc_challenge,piqa,lambada,boolq,mmlu"
# metrics shown in the table, in order; accuracies print as percentages
SHOWN = ("ppl", "acc", "acc_norm", "perplexity")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="perplexity and zero-shot tasks (lm-evaluation-harness definitions)",
        description="Evaluate a model on WikiText-2 perplexity and zero-shot tasks with lm-evaluation-harness's "
                    "prompts and metrics; with --baseline, print baseline | model | difference.")
    add_model_args(p)
    p.add_argument("--baseline", help="a second model (e.g. the teacher) evaluated on the same examples")
    p.add_argument("--tasks", default=DEFAULT_TASKS,
                   help="comma-separated task names, or ppl:FILE / ppl:DATASET:CONFIG:SPLIT (default: %(default)s)")
    p.add_argument("--list-tasks", action="store_true", help="print the registered tasks and exit")
    p.add_argument("--limit", type=int, help="examples per task (per subject for mmlu, windows for perplexity)")
    p.add_argument("--first-n", action="store_true",
                   help="with --limit take the first N examples, as lm-eval --limit does, instead of a seeded random subset")
    p.add_argument("--seed", type=int, default=1234, help="subsampling seed for --limit (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default: %(default)s)")
    p.add_argument("--precision", default="auto",
                   help="auto | bf16 | fp32: bf16 autocast where the device runs it natively and it is measured "
                        "faster at this model's shapes (auto), always, or never (default: %(default)s)")
    p.add_argument("--bf16", action="store_const", const="bf16", dest="precision",
                   help="same as --precision bf16 (kept for one release)")
    p.add_argument("--window", type=int, default=2048, help="perplexity window length in tokens (default: %(default)s)")
    p.add_argument("--stride", type=int, help="perplexity window step (default: the window, i.e. no overlap)")
    p.add_argument("--no-share-prefix", action="store_true",
                   help="score every option in full, in the harness's order (slower; for cross-checks)")
    p.add_argument("--data-dir", help="folder with local task files (default: $COMPACTLM_DATA_DIR)")
    p.add_argument("--json", dest="json_out", help="write all results (and per-example records) to this file")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> list[str]:
    from ..errors import CompactLMError
    from ..evaluate import get_task

    problems = []
    if args.limit is not None and args.limit <= 0:
        problems.append(f"--limit must be > 0 (got {args.limit})")
    if args.batch_size <= 0:
        problems.append(f"--batch-size must be > 0 (got {args.batch_size})")
    if args.window < 2 or (args.stride is not None and not 0 < args.stride <= args.window):
        problems.append(f"--window must be >= 2 and 0 < --stride <= --window (got {args.window}, {args.stride})")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        problems.append("--tasks is empty")
    for name in tasks:
        if not name.startswith("ppl:"):
            try:
                get_task(name)
            except CompactLMError as err:
                problems.append(str(err))
    if problems:
        raise CompactLMError("; ".join(problems))
    return tasks


def _evaluate(name: str, args, tasks: list[str], rows: dict) -> dict:
    from ..evaluate import run_task
    from .common import model_from_args

    from ..hardware import precision_for

    model, tokenizer = model_from_args(args, name)
    bf16 = precision_for(args.precision, model).bf16
    start = time.perf_counter()
    results = {}
    for task in tasks:
        results[task] = run_task(task, model, tokenizer, limit=args.limit, seed=args.seed, first_n=args.first_n,
                                 batch_size=args.batch_size, bf16=bf16, data_dir=args.data_dir,
                                 window=args.window, stride=args.stride, share_prefix=not args.no_share_prefix,
                                 rows=rows.get(task))
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
    from ..evaluate import available_tasks, get_task
    from ..evaluate.sources import load_rows
    from ..io import check_output_file, write_json_atomic

    if args.list_tasks:
        for name in available_tasks():
            print(f"{name:16s} {get_task(name).description}")
        return 0
    from ..hardware import check_precision

    check_precision(args.precision, "--precision")
    tasks = _check(args)
    if args.json_out:
        check_output_file(args.json_out)   # before any work: the results must have somewhere to go
    # find every task's data before loading any model: a missing source fails in seconds
    rows = {}
    for name in tasks:
        if not name.startswith("ppl:"):
            task = get_task(name)
            rows[name] = load_rows(task.name, task.source, args.data_dir)
    model_results = _evaluate(args.model, args, tasks, rows)
    columns = [(args.model, model_results)]
    baseline_results = None
    if args.baseline:
        baseline_results = _evaluate(args.baseline, args, tasks, rows)
        columns = [(args.baseline, baseline_results), (args.model, model_results)]
    print(_table(tasks, columns))
    seconds = sum(r["seconds"] for r in model_results.values())
    print(f"\n{args.model}: {seconds:.1f} s" + (" (accuracies in %, diff = model - baseline)" if args.baseline else ""))
    if args.json_out:
        out = {"model": args.model, "baseline": args.baseline,
               "config": {k: getattr(args, k) for k in ("tasks", "limit", "first_n", "seed", "batch_size", "precision",
                                                         "window", "stride", "dtype", "device")},
               "results": {"model": model_results, **({"baseline": baseline_results} if baseline_results else {})}}
        write_json_atomic(args.json_out, out)
        print(f"wrote {args.json_out}")
    return 0
