"""The shipped real-teacher runs in one table each: quality per model, the search's choice, wall time per stage.

    COMPACTLM_DATA_DIR=../shared/data compactlm run gemma3-270m --out runs/gemma3-270m \\
        --set 'eval.tasks=[wikitext2,ppl:exllamav2:c4,arc_easy,piqa,winogrande]'
    python -m benchmarks.gguf_llamacpp --model runs/gemma3-270m/student/distilled --quants q8_0 \\
        --out benchmarks/results/gguf_llamacpp_gemma3-270m.json
    python -m benchmarks.real_teachers runs/gemma3-270m [runs/qwen2.5-coder-0.5b ...]

Reads each run directory (``run_state.json``: the recipe and the seconds of every stage; ``eval.json``:
teacher, pruned and distilled rows, the exported GGUF scored through transformers; the search's
``candidates.json``), and ``benchmarks/results/gguf_llamacpp_<teacher>.json`` when present (the
distilled student's q8_0 GGUF scored by llama.cpp itself). Prints Markdown tables and writes
``benchmarks/results/real_teachers.json``. Runs nothing heavy: the runs are the measurement.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import RESULTS, fmt, run_script

SKIP = {"distinct_2"}


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def summarize(run: Path) -> dict:
    """What one run directory says about itself."""
    state = _read(run / "run_state.json") or {}
    evaluation = _read(run / "eval.json") or {"rows": []}
    recipe = state.get("recipe", {})
    stages = {key: round(value.get("seconds", 0.0)) for key, value in state.get("stages", {}).items()}
    search = None
    for step in recipe.get("steps", []):
        found = _read(run / step["name"] / "search" / "candidates.json")
        if found:
            ranked = sorted(found["candidates"], key=lambda c: c.get("proxy_loss") or float("inf"))
            search = {"candidates": len(found["candidates"]), "top": ranked[:5],
                      "selected": next((c for c in found["candidates"] if c.get("selected")), None)}
    llamacpp = _read(RESULTS / f"gguf_llamacpp_{recipe.get('teacher')}.json")
    rows = [{"model": r["model"], "parameters": r["parameters"], "precision": r.get("precision"),
             "metrics": {k: v for k, v in r["metrics"].items() if k not in SKIP},
             "continuation": (r.get("continuations") or [{}])[0].get("text")} for r in evaluation["rows"]]
    return {"run": str(run), "teacher": recipe.get("teacher"), "stages_s": stages, "rows": rows,
            "search": search, "llamacpp": llamacpp and {"rows": llamacpp["rows"], "text": llamacpp["text"],
                                                        "windows": llamacpp["windows"], "window": llamacpp["window"]}}


def render(summary: dict) -> str:
    """Markdown: the quality table, the search's top candidates, the stage times."""
    metrics = []
    for row in summary["rows"]:
        metrics += [k for k in row["metrics"] if k not in metrics]
    lines = [f"### {summary['teacher']} ({summary['run']})", "",
             "| model | parameters | " + " | ".join(metrics) + " |", "|---|---:|" + "---:|" * len(metrics)]
    for row in summary["rows"]:
        values = [fmt(row["metrics"].get(k), ".3f" if "acc" in k else ",.1f") for k in metrics]
        lines.append(f"| {row['model']} | {row['parameters'] / 1e6:.1f}M | " + " | ".join(values) + " |")
    if summary["llamacpp"]:
        lc = summary["llamacpp"]
        lines += ["", f"llama.cpp on {lc['windows']} x {lc['window']} tokens of {lc['text']}:", "",
                  "| file | runtime | MB | ppl |", "|---|---|---:|---:|"]
        lines += [f"| {r['model']} | {r['runtime']} | {fmt(r['file_mb'], '.1f')} | {r['ppl']:.2f} |" for r in lc["rows"]]
    if summary["search"]:
        s = summary["search"]
        lines += ["", f"Search: {s['candidates']} candidates; the best by proxy (held-out LM loss, pruned):", "",
                  "| candidate | parameters | proxy loss | retrained loss |", "|---|---:|---:|---:|"]
        lines += [f"| {c['name']}{' (selected)' if c.get('selected') else ''} | {c['params'] / 1e6:.1f}M | "
                  f"{fmt(c.get('proxy_loss'), '.3f')} | {fmt(c.get('retrained_loss'), '.3f')} |" for c in s["top"]]
    lines += ["", "Stage wall times: " + ", ".join(f"{k} {v} s" for k, v in summary["stages_s"].items())
              + f"; total {sum(summary['stages_s'].values()) / 60:.1f} min."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from compactlm.hardware import device_kind
    from compactlm.io import write_json_atomic

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", default=str(RESULTS / "real_teachers.json"))
    args = p.parse_args(argv)
    summaries = [summarize(run) for run in args.runs]
    machine = device_kind("cpu")
    for summary in summaries:
        print(render(summary) + "\n")
    print(f"machine: {machine}")
    write_json_atomic(args.out, {"runs": summaries, "machine": machine})
    return 0


if __name__ == "__main__":
    run_script(main)
