"""Verbs ``run`` (a YAML recipe end to end) and ``report`` (re-render a run's HTML report)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import CompactLMError, interrupt_exit_code
from ..readers import read_json_object, reading
from ..recipes import check_recipe, load_recipe, resolve_path, run
from ..recipes.gguf_stage import describe_exports
from ..recipes.run_dir import RunLayout


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a recipe end to end: importance, search, prune, distill, eval, report",
                       description="Without RECIPE: the embedded default (smollm2-135m -> ~2/3 of its parameters on "
                                   "packaged text, offline, CPU). RECIPE is a YAML file or a shipped recipe name.")
    p.add_argument("recipe", nargs="?", default=None, help="YAML recipe path or shipped name (default, iterative, fixed)")
    p.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue a killed run: finished stages are skipped")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set steps.0.distill.tokens=65536 (repeatable)")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--no-plan-check", action="store_true",
                   help="do not refuse a recipe that `compactlm plan` finds too large for the device's memory")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="confirm a recipe's 'trust_remote_code: true' (the checkpoint's own Python code runs); "
                        "a recipe cannot turn it on by itself")
    p.set_defaults(func=run_recipe)

    p = sub.add_parser("report", help="(re)render the HTML report of a finished run")
    p.add_argument("run_dir", help="a run directory written by `compactlm run`")
    p.set_defaults(func=run_report)


def _print_eval(evaluation: dict) -> None:
    rows = evaluation["rows"]
    metrics = list(dict.fromkeys(k for r in rows for k in r["metrics"]))
    width = max(len(r["model"]) for r in rows) + 2
    print(f"{'model':<{width}}{'params':>10}" + "".join(f"{m:>{max(12, len(m) + 2)}}" for m in metrics))
    for r in rows:
        values = "".join(f"{r['metrics'][m]:>{max(12, len(m) + 2)}.4g}" if m in r["metrics"] else f"{'-':>{max(12, len(m) + 2)}}"
                         for m in metrics)
        print(f"{r['model']:<{width}}{r['parameters'] / 1e6:>9.2f}M{values}")
    _print_continuations(rows)


def _print_continuations(rows: list[dict]) -> None:
    """Greedy continuations of each eval prompt by the teacher, the prune and the student, side by side."""
    shown = [r for r in rows if r.get("continuations") and "GGUF" not in r["model"]]
    if not shown:
        return
    width = max(len(r["model"]) for r in shown) + 2
    print("\ngreedy continuations (distinct-2 in the table above: 1.0 = no repeated bigram)")
    for i, item in enumerate(shown[0]["continuations"]):
        print(f"  {item['prompt']!r}")
        for r in shown:
            text = " ".join(r["continuations"][i]["text"].split())
            print(f"    {r['model']:<{width}}{text}")


def run_recipe(args: argparse.Namespace) -> int:
    from ..report import render_report

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:   # every process would run every stage and write the same run directory
        raise CompactLMError(
            f"compactlm run was started as {world} processes (WORLD_SIZE={world}); a recipe run is one process. "
            f"Run it without torchrun/accelerate, or run its stages as verbs under torchrun "
            f"(importance, search, distill --strategy fsdp, eval: see docs/scaling.md).")
    recipe = load_recipe(args.recipe, args.overrides)
    if recipe.trust_remote_code and not args.trust_remote_code:
        raise CompactLMError("The recipe sets trust_remote_code: true, which runs Python code shipped with the "
                             f"teacher '{recipe.teacher}'. A recipe cannot turn that on by itself: add "
                             "--trust-remote-code to the command line if you trust that checkpoint.")
    if not args.no_plan_check:
        check_recipe(recipe)   # refuses, with the plan, what cannot fit before any model loads
    out = Path(args.out) if args.out else Path("runs") / resolve_path(args.recipe).stem
    try:
        result = run(recipe, out, resume=args.resume, overwrite=args.overwrite,
                     report=None if args.no_report else render_report)
    except KeyboardInterrupt as err:
        again = " ".join(["compactlm run", *([args.recipe] if args.recipe else []), "--out", str(out), "--resume",
                          *(f"--set {o}" for o in args.overrides),
                          *(["--trust-remote-code"] if args.trust_remote_code else [])])
        print(f"compactlm run: interrupted; continue with: {again}", file=sys.stderr)
        return interrupt_exit_code(err)
    print()
    _print_eval(result.eval)
    print(f"\nstudent: {result.student}  (loads with AutoModelForCausalLM.from_pretrained)")
    for line in describe_exports(result.exports):
        print(line)
    if result.report is not None:
        print(f"report:  {result.report}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from ..report import render_report

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise CompactLMError(f"Run directory '{run_dir}' does not exist; give a directory written by `compactlm run`.")
    fix = f"Re-create it with `compactlm run RECIPE --out {run_dir} --overwrite`."
    layout = RunLayout(run_dir)
    for path in (layout.state, layout.eval):
        if path.is_file():
            read_json_object(path, "run file", fix)
    with reading(run_dir, "compactlm run directory", fix):   # any file of the run that fails to parse
        print(render_report(run_dir))
    return 0
