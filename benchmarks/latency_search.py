"""Search under a llama.cpp decode-speed budget against the same search by parameters alone, on the embedded teacher.

    make llamacpp                         # llama-cpp-python, once (~6 minutes on 2 cores)
    python -m benchmarks.latency_search   # ~30 minutes on 2 cores: two default runs + the timings

1. The candidate pool of the default recipe's search (its parameter budget, 12 candidates kept,
   so a latency budget measures 24) is timed in llama.cpp (q8_0 GGUF of random weights of each
   shape, prompt 128, 32 decoded tokens, median of 5 runs): the cache the runs then read.
2. The decode budget is the median of those medians: about half the pool meets it.
3. ``compactlm run default`` twice, the same in everything but the budget: by parameters alone
   (``runs/latency-params``), and with ``search.latency`` (``runs/latency-decode``).
4. The pool is timed a second time without the cache: how stable the ranking is from run to run
   (Spearman of the medians; pairs whose order flips although their quartile ranges did not overlap).

Prints the table (architecture, parameters, measured decode ms/step and prefill tok/s in llama.cpp,
held-out and C4 perplexity after the same distillation, search wall time) and writes
``benchmarks/results/latency_search.json`` with the CPU kind.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS, ROOT, fmt, run_script

RUNS = ROOT / "runs"
POOL_KEEP = 12
SETTINGS = {"runtime": "llamacpp", "weights": "q8_0", "prompt": 128, "new_tokens": 32, "repeats": 5}


def _cpu() -> dict:
    from compactlm.hardware import cpu_name, native_bf16

    flags = Path("/proc/cpuinfo").read_text()
    return {"cpu": cpu_name(), "cores": len([line for line in flags.splitlines() if line.startswith("processor")]),
            "native_bf16": native_bf16("cpu"), "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags}


def _pool(use_cache: bool) -> list[dict]:
    """Every candidate of the default recipe's pool with its llama.cpp timing."""
    from compactlm.arch import adapter_for
    from compactlm.arch.params import parameter_layout
    from compactlm.config import validate
    from compactlm.config.options import SearchArgs
    from compactlm.deploy import measure, tokenizer_source
    from compactlm.recipes import load_recipe
    from compactlm.search import candidates_of
    from compactlm.sizing import load_config

    recipe = load_recipe("default")
    step = recipe.steps[0]
    config = load_config(recipe.teacher)
    adapter = adapter_for(config)
    source = adapter.architecture(config)
    args = validate(SearchArgs, {**_asdict(step.search), "target_params": step.target_params, "max_candidates": POOL_KEEP,
                                 "latency": {**SETTINGS, "decode_ms": 1e9}})
    _, pool, _, _ = candidates_of(args, source, parameter_layout(config), config.model_type, config=config)
    tokenizer = tokenizer_source(recipe.teacher)
    rows = []
    for c in pool:
        shape = adapter.pruned_config(config, c.arch, list(range(c.arch.num_hidden_layers)))
        lat = measure(shape, args.latency, tokenizer_source=tokenizer, use_cache=use_cache)
        q1, q3 = lat.range("decode_ms")
        rows.append({"name": c.name, "params": c.params, "decode_ms": lat.median("decode_ms"), "decode_q1": q1,
                     "decode_q3": q3, "prefill_tokens_per_s": lat.median("prefill_tokens_per_s")})
        print(f"  {c.name:<26} {c.params / 1e6:6.1f}M  decode {lat.median('decode_ms'):6.2f} ms "
              f"({q1:.2f}-{q3:.2f})  prefill {lat.median('prefill_tokens_per_s'):7.0f} tok/s", flush=True)
    return rows


def _asdict(section) -> dict:
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(section).items() if v is not None}


def _stability(first: list[dict], second: list[dict]) -> dict:
    from compactlm.search import spearman

    a = [r["decode_ms"] for r in first]
    b = {r["name"]: r["decode_ms"] for r in second}
    flips = tied = pairs = 0
    for i, x in enumerate(first):
        for y in first[i + 1:]:
            pairs += 1
            overlap = x["decode_q1"] <= y["decode_q3"] and y["decode_q1"] <= x["decode_q3"]
            tied += overlap
            if not overlap and (x["decode_ms"] < y["decode_ms"]) != (b[x["name"]] < b[y["name"]]):
                flips += 1
    drift = statistics.median(abs(b[r["name"]] / r["decode_ms"] - 1) for r in first)
    return {"spearman": spearman(a, [b[r["name"]] for r in first]), "pairs": pairs, "tied_pairs": tied,
            "flipped_untied_pairs": flips, "median_relative_change": drift}


def _run(out: Path, extra: list[str]) -> float:
    start = time.time()
    subprocess.run([sys.executable, "-m", "compactlm", "-q", "run", "default", "--out", str(out), "--overwrite",
                    "--set", f"steps.0.search.max_candidates={POOL_KEEP}", *extra], check=True)
    return time.time() - start


def _summary(run: Path, pool: dict[str, dict]) -> dict:
    state = json.loads((run / "run_state.json").read_text())
    search = json.loads((run / "student" / "search" / "candidates.json").read_text())
    evaluation = json.loads((run / "eval.json").read_text())
    winner = search["winner"]
    rows = {r["model"]: r["metrics"] for r in evaluation["rows"]}
    distilled = rows["student: distilled"]
    timing = pool.get(winner["name"], {})
    return {"run": str(run.relative_to(ROOT)), "winner": winner["name"], "params": winner["params"],
            "decode_ms": timing.get("decode_ms"), "prefill_tokens_per_s": timing.get("prefill_tokens_per_s"),
            "candidates": len(search["candidates"]), "heldout_ppl": distilled.get("heldout_ppl"),
            "c4_ppl": next((v for k, v in distilled.items() if k.startswith("ppl") and "c4" in k), None),
            "search_s": round(state["stages"]["student/search"]["seconds"]),
            "teacher_heldout_ppl": rows["teacher"].get("heldout_ppl")}


def _stability_only() -> int:
    """Two fresh timing passes of the pool (no cache), added to the saved result as ``stability_quiet``."""
    path = RESULTS / "latency_search.json"
    result = json.loads(path.read_text()) if path.is_file() else {"machine": _cpu(), "settings": SETTINGS}
    print("pool, pass 1 (not cached):", flush=True)
    first = _pool(use_cache=False)
    print("pool, pass 2 (not cached):", flush=True)
    second = _pool(use_cache=False)
    stability = _stability(first, second)
    print(f"\nranking stability over {len(first)} shapes, two timing passes: Spearman {stability['spearman']:.3f}; "
          f"{stability['tied_pairs']} of {stability['pairs']} pairs tied; {stability['flipped_untied_pairs']} untied "
          f"pairs flipped; median change of a median {stability['median_relative_change']:.1%}")
    result["stability_quiet"] = {**stability, "passes": [first, second], "machine": _cpu()}
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-runs", action="store_true",
                        help="only time the pool twice without the cache (nothing else running), kept beside the runs")
    args = parser.parse_args()
    if args.skip_runs:
        return _stability_only()
    print("pool, timed in llama.cpp (cached):", flush=True)
    first = _pool(use_cache=True)
    budget = statistics.median(r["decode_ms"] for r in first)
    print(f"decode budget: {budget:.2f} ms/step (the median of the pool)", flush=True)
    runs = {}
    if not args.skip_runs:
        by_name = {r["name"]: r for r in first}
        seconds = {"params": _run(RUNS / "latency-params", []),
                   "decode": _run(RUNS / "latency-decode", [
                       "--set", "steps.0.search.latency={" + ", ".join(f"{k}: {v}" for k, v in SETTINGS.items())
                       + f", decode_ms: {budget:.3f}" + "}"])}
        runs = {name: {**_summary(RUNS / f"latency-{name}", by_name), "run_s": round(s)} for name, s in seconds.items()}
    print("pool, timed again without the cache:", flush=True)
    second = _pool(use_cache=False)
    stability = _stability(first, second)

    print("\n| search | chosen | params | llama.cpp q8_0 decode ms/step | prefill tok/s | held-out ppl | C4 ppl | "
          "search s |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for name, r in runs.items():
        label = "parameters only" if name == "params" else f"+ decode <= {budget:.2f} ms"
        print(f"| {label} | {r['winner']} | {r['params'] / 1e6:.1f}M | {fmt(r['decode_ms'])} | "
              f"{fmt(r['prefill_tokens_per_s'], '.0f')} | {fmt(r['heldout_ppl'], '.1f')} | {fmt(r['c4_ppl'], '.1f')} | "
              f"{r['search_s']} |")
    print(f"\nranking stability over {len(first)} shapes, two timing passes: Spearman {stability['spearman']:.3f}; "
          f"{stability['tied_pairs']} of {stability['pairs']} pairs tied (quartile ranges overlap); "
          f"{stability['flipped_untied_pairs']} untied pairs flipped; median change of a median "
          f"{stability['median_relative_change']:.1%}")
    result = {"machine": _cpu(), "settings": SETTINGS, "decode_budget_ms": budget, "pool": first, "pool_again": second,
              "stability": stability, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latency_search.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {RESULTS / 'latency_search.json'} ({result['machine']['cpu']})")
    return 0


if __name__ == "__main__":
    run_script(main)
