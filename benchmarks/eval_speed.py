"""Evaluation speed: compactlm vs lm-evaluation-harness on the same tasks, model, examples and batch size.

    python benchmarks/eval_speed.py --tasks hellaswag,arc_easy,winogrande,lambada_openai --limit 100 --batch-size 16

Both run in this one process on one loaded model, task by task; the harness is pointed at
the same rows (see ``harness_agreement.py``). Prints examples/s of both and the ratio, and
writes ``benchmarks/results/eval_speed.json``. Timings on a shared machine are noisy: the
load average is recorded with them. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

import harness_agreement as ha  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    import logging

    import torch

    from compactlm.evaluate import get_task
    from compactlm.io import write_json_atomic
    from compactlm.models import load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tasks", default=ha.DEFAULT_TASKS)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1, help="time each engine this often, interleaved; keep the fastest")
    p.add_argument("--also-unshared", action="store_true",
                   help="also time compactlm with --no-share-prefix (every option scored in full)")
    p.add_argument("--data-dir", default=str(ha.DEFAULT_DATA) if ha.DEFAULT_DATA.is_dir() else None)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "eval_speed.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("COMPACTLM_NO_PROGRESS", "1")
    tasks = [get_task(t).name for t in args.tasks.split(",")]
    model, tokenizer = load_model(args.model)
    load_before = os.getloadavg()[0]

    rows = []
    for task in tasks:
        row = {"task": task, "compactlm_s": float("inf"), "harness_s": float("inf")}
        if args.also_unshared:
            row["compactlm_unshared_s"] = float("inf")
        indices = None
        for rep in range(args.repeats):
            # interleaved, the order flipped every repeat (a shape seen before can run faster),
            # the fastest kept: other load on the machine only ever slows a run down
            engines = ["ours", "unshared", "harness"] if args.also_unshared else ["ours", "harness"]
            for engine in engines if rep % 2 == 0 else engines[::-1]:
                if engine == "harness":
                    if indices is None:  # the harness needs compactlm's subset: run ours first once
                        continue
                    _, _, seconds = ha.run_harness(model, tokenizer, [task], indices, args.batch_size, args.data_dir)
                    row["harness_s"] = min(row["harness_s"], seconds)
                    continue
                res = ha.run_compactlm(model, tokenizer, [task], args.limit, args.seed, args.batch_size, args.data_dir,
                                       share_prefix=engine == "ours")[task]
                indices = {task: [s["index"] for s in res["samples"]]}
                key = "compactlm_s" if engine == "ours" else "compactlm_unshared_s"
                row["n"], row[key] = res["n"], min(row[key], res["seconds"])
            if row["harness_s"] == float("inf"):
                _, _, row["harness_s"] = ha.run_harness(model, tokenizer, [task], indices, args.batch_size, args.data_dir)
        rows.append(row)

    head = f"{'task':16s} {'n':>5s} {'compactlm ex/s':>15s}" + (f" {'unshared ex/s':>14s}" if args.also_unshared else "") + \
        f" {'harness ex/s':>13s} {'speed-up':>9s}"
    print(head)
    print("-" * len(head))
    for r in rows + [{"task": "total", "n": sum(r["n"] for r in rows),
                      **{k: sum(r[k] for r in rows) for k in rows[0] if k.endswith("_s")}}]:
        line = f"{r['task']:16s} {r['n']:5d} {r['n'] / r['compactlm_s']:15.2f}"
        if args.also_unshared:
            line += f" {r['n'] / r['compactlm_unshared_s']:14.2f}"
        print(line + f" {r['n'] / r['harness_s']:13.2f} {r['harness_s'] / r['compactlm_s']:8.2f}x")
    import lm_eval

    out = {"model": args.model, "limit": args.limit, "batch_size": args.batch_size, "seed": args.seed, "repeats": args.repeats,
           "lm_eval": lm_eval.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "load_average": [load_before, os.getloadavg()[0]], "rows": rows}
    write_json_atomic(args.json, out)
    print(f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}; wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
