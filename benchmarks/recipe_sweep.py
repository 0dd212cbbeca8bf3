"""Tabulate a sweep of the default recipe: several `compactlm run` directories that differ in one setting.

    compactlm run --out runs/lr3e-4 --set steps.0.distill.train.lr=3e-4 --set steps.0.distill.train.min_lr=3e-5
    python -m benchmarks.recipe_sweep runs/default runs/lr3e-4 runs/lr1e-3 [--key steps.0.distill.train.lr]

Reads each run's ``recipe.yaml`` (the swept value), ``eval.json`` (the distilled student's held-out and
C4 perplexity, ARC-Easy, distinct-2 — computed here from greedy continuations for runs made before
the eval stage recorded it) and ``run_state.json`` (stage seconds, the search winner, the machine).
Prints a table and writes ``benchmarks/results/recipe_sweep.json``; ``benchmarks/peers.py`` puts it
in ``docs/peers.md``. Every run must be on the same machine for the wall times to compare.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from benchmarks.common import RESULTS, run_script


def _lookup(recipe: dict, key: str):
    value = recipe
    for part in key.split("."):
        value = value[int(part)] if isinstance(value, list) else value.get(part)
    return value


def run_row(run: Path, key: str) -> dict:
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    state = json.loads((run / "run_state.json").read_text())
    evaluation = json.loads((run / "eval.json").read_text())
    student = next(r for r in evaluation["rows"] if r["model"].endswith("distilled"))
    metrics = dict(student["metrics"])
    if "distinct_2" not in metrics:   # a run from before the eval stage recorded continuations
        from compactlm import load_model
        from compactlm.evaluate.generation import greedy_continuations, mean_distinct

        model, tok = load_model(student["path"])
        continuations = greedy_continuations(model, tok)
        metrics["distinct_2"] = mean_distinct(continuations, 2)
        student["continuations"] = [{"prompt": c.prompt, "text": c.text} for c in continuations]
    stages = {k: round(v.get("seconds", 0), 1) for k, v in state["stages"].items()}
    search = next((v for k, v in state["stages"].items() if k.endswith("/search")), {})
    return {"run": str(run), key: _lookup(recipe, key), "winner": search.get("name"), "parameters": student["parameters"],
            "heldout_ppl": metrics["heldout_ppl"], "c4_ppl": metrics.get("ppl:exllamav2:c4 ppl"),
            "arc_easy_acc": metrics.get("arc_easy acc"), "distinct_2": metrics["distinct_2"],
            "stage_seconds": stages, "total_stage_seconds": round(sum(stages.values()), 1),
            "machine": state["sessions"][-1].get("hardware", {}).get("device"),
            "continuations": student.get("continuations", [])}


def main(argv: list[str] | None = None) -> int:
    from compactlm.io import write_json_atomic

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--key", default="steps.0.distill.train.lr", help="the swept recipe key")
    p.add_argument("--out", type=Path, default=RESULTS / "recipe_sweep.json")
    args = p.parse_args(argv)
    rows = [run_row(run, args.key) for run in args.runs]
    print(f"{args.key:>28} {'winner':<22} {'held-out ppl':>12} {'C4 ppl':>8} {'ARC-E':>6} {'distinct-2':>10} {'stages s':>9}")
    for r in rows:
        print(f"{r[args.key]!s:>28} {r['winner'] or '-':<22} {r['heldout_ppl']:>12.2f} {r['c4_ppl'] or 0:>8.1f} "
              f"{r['arc_easy_acc'] or 0:>6.3f} {r['distinct_2']:>10.3f} {r['total_stage_seconds']:>9.0f}")
    write_json_atomic(args.out, {"key": args.key, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_script(main)
