"""CPU levers for the distillation step, each measured against the same baseline on this machine.

    python -m benchmarks.cpu_levers                      # every lever, ~15 minutes on 2 cores
    python -m benchmarks.cpu_levers --levers baseline,fp32,threads-1 --steps 4

Every arm is a fresh process (so thread pools, allocators and compiled kernels never leak between
arms) that prunes the embedded teacher SmolLM2-135M to an MLP-768 student and runs compactlm's
own trainer (``compactlm.distill.distill``: teacher forward + student forward/backward + chunked
forward KL + AdamW) for ``--steps`` steps of 4 x 512 tokens. The figure is the median tokens/s
of the steps after the first (the first pays for kernel selection and, with compile, compilation;
its time is reported separately), and MFU against the GEMM rate measured at the model's shapes
(2 N_teacher + 6 N_student FLOPs per token, compactlm.hardware). Arms:

- ``baseline``: ``precision auto``, threads = physical cores, logit-loss chunk 512, glibc malloc
- ``fp32`` / ``bf16``: the precision forced
- ``threads-1``: one thread instead of the physical cores
- ``chunk-256`` / ``chunk-2048`` / ``chunk-0`` (unchunked): the logit-loss chunk size
- ``jemalloc`` / ``tcmalloc``: ``LD_PRELOAD`` of Debian's libjemalloc2 / libtcmalloc-minimal4
- ``compile``: ``torch.compile`` (inductor, CPU) of every decoder layer of teacher and student
- combinations joined by ``+`` (``fp32+tcmalloc``)

Prints a table and writes ``benchmarks/results/cpu_levers.json`` with the CPU kind. Nothing here
asserts a timing; run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, ChildFailed, run_child, run_script
from compactlm.config import ImportanceSection

ALLOCATORS = {"jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
              "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"}
LEVERS = ["baseline", "fp32", "bf16", "threads-1", "chunk-256", "chunk-2048", "chunk-0", "jemalloc", "tcmalloc",
          "compile"]


def physical_cores() -> int:
    try:
        text = Path("/proc/cpuinfo").read_text()
        pairs = {(b.split("physical id")[1].split("\n")[0] if "physical id" in b else "0",
                  b.split("core id")[1].split("\n")[0] if "core id" in b else str(i))
                 for i, b in enumerate(text.split("\n\n")) if b.strip()}
        return max(len(pairs), 1)
    except OSError:
        return os.cpu_count() or 1


def worker(lever: str, steps: int) -> None:
    """One arm, in this process: prune, distill ``steps`` steps, print per-step tokens/s (JSON, the last line)."""
    import torch

    from compactlm import hardware
    from compactlm.data import load_blocks
    from compactlm.distill import LossArgs, TrainArgs, distill
    from compactlm.importance import estimate_importance
    from compactlm.models import load_model
    from compactlm.prune import prune

    parts = lever.split("+")               # levers combine: fp32+tcmalloc
    torch.set_num_threads(1 if "threads-1" in parts else physical_cores())
    teacher, tokenizer = load_model("smollm2-135m")
    blocks = load_blocks("exllamav2:wiki", tokenizer, seq_len=512, num_samples=4 * steps + 8, heldout_samples=0)
    scores = estimate_importance(teacher, blocks.train[:8], ImportanceSection(batch_size=4, layer_loss_samples=0),
                                 show_progress=False, precision="fp32")
    student, _ = prune(teacher, scores, intermediate_size=768)
    precision = next((p for p in parts if p in ("fp32", "bf16")), "auto")
    chunk = next((int(p.split("-")[1]) for p in parts if p.startswith("chunk-")), 512)
    if "compile" in parts:
        torch._dynamo.config.cache_size_limit = 256      # one graph per layer instance
        for model in (teacher, student):
            for layer in model.model.layers:
                layer.compile()
    with tempfile.TemporaryDirectory() as tmp:
        result = distill(student.float(), teacher, blocks.train, Path(tmp) / "run", tokenizer=tokenizer,
                         loss=LossArgs(chunk_size=chunk),
                         args=TrainArgs(batch_size=4, micro_batch_size=4, max_steps=steps, precision=precision,
                                        val_every=0, checkpoint_every=0))
        rates = [json.loads(line)["tok_per_s"] for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()
                 if '"tok_per_s"' in line]
    flops = hardware.train_flops_per_token(student) + hardware.forward_flops_per_token(teacher)
    # the yardstick: the GEMM rate at the rows one micro-batch multiplies (4 x 512), fresh, not cached
    peak = hardware.measured_rates(student.config, "cpu", rows=2048, use_cache=False)[result.precision["precision"]]
    print(json.dumps({"rates": rates, "precision": result.precision, "flops_per_token": flops, "peak": peak,
                      "threads": torch.get_num_threads(), "chunk": chunk}))


def run_arm(lever: str, steps: int) -> dict:
    env = dict(os.environ, COMPACTLM_NO_PROGRESS="1")
    for allocator in (p for p in lever.split("+") if p in ALLOCATORS):
        if not Path(ALLOCATORS[allocator]).is_file():
            return {"lever": lever, "skipped": f"{ALLOCATORS[allocator]} not installed (apt-get install "
                                               f"{'libjemalloc2' if allocator == 'jemalloc' else 'libtcmalloc-minimal4'})"}
        env["LD_PRELOAD"] = ALLOCATORS[allocator]
    start = time.time()
    try:
        data = run_child("benchmarks.cpu_levers", "--worker", lever, "--steps", steps, env=env)
    except ChildFailed as err:
        return {"lever": lever, "skipped": f"failed: {err}"}
    rates = data["rates"]
    steady = statistics.median(rates[1:]) if len(rates) > 1 else rates[0]
    peak = data["peak"]
    return {"lever": lever, "tokens_per_s": steady, "first_step_tokens_per_s": rates[0], "step_rates": rates,
            "precision": data["precision"]["precision"], "threads": data["threads"], "chunk": data["chunk"],
            "mfu": data["flops_per_token"] * steady / (peak * 1e9) if peak else None, "peak_gflops": peak,
            "gemm_gflops": data["precision"]["gflops"], "wall_s": round(time.time() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--levers", default=",".join(LEVERS))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default=str(RESULTS / "cpu_levers.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.steps)
        return 0
    from compactlm.hardware import device_kind
    from compactlm.io import write_json_atomic

    rows = []
    for lever in args.levers.split(","):
        row = run_arm(lever, args.steps)
        rows.append(row)
        print(f"{lever}: {row.get('tokens_per_s', row.get('skipped'))}", flush=True)
    base = next((r["tokens_per_s"] for r in rows if r["lever"] == "baseline" and "tokens_per_s" in r), None)
    for r in rows:
        if base and "tokens_per_s" in r:
            r["speedup_vs_baseline"] = r["tokens_per_s"] / base
    machine = device_kind("cpu")
    print(f"\ndistillation step, SmolLM2-135M -> MLP-768 student, 4 x 512 tokens, median of steps 2..{args.steps} "
          f"({machine}, physical cores {physical_cores()})\n")
    print(f"{'lever':<16}{'precision':>10}{'threads':>8}{'tok/s':>9}{'vs base':>9}{'MFU':>7}{'1st step tok/s':>16}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['lever']:<16}  skipped: {r['skipped']}")
            continue
        mfu = f"{r['mfu']:.0%}" if r["mfu"] else "-"
        print(f"{r['lever']:<16}{r['precision']:>10}{r['threads']:>8}{r['tokens_per_s']:>9.0f}"
              f"{r.get('speedup_vs_baseline', 1.0):>8.2f}x{mfu:>7}{r['first_step_tokens_per_s']:>16.0f}")
    write_json_atomic(args.out, {"machine": machine, "physical_cores": physical_cores(), "steps": args.steps,
                                 "tokens_per_step": 2048, "rows": rows})
    return 0


if __name__ == "__main__":
    run_script(main)
