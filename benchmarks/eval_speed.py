"""Evaluation speed: compactlm vs lm-evaluation-harness on the same tasks, model, examples and batch size.

    python -m benchmarks.eval_speed --tasks hellaswag,arc_easy,winogrande,lambada_openai --limit 100 --batch-size 16

Both run in this one process on one loaded model, task by task; the harness is pointed at
the same rows (see ``harness_agreement.py``). Prints examples/s of both and the ratio, tokens/s and
MFU, and writes ``benchmarks/results/eval_speed.json``. MFU (compactlm.hardware): tokens through the decoder
x 2N_body + rows through the LM head x 2N_head (counted by forward hooks: compactlm scores only the
positions it needs, the harness projects all), against the fp32 GEMM rate measured at the model's shapes
(both engines run fp32 here). Timings on a shared machine are noisy: the
load average is recorded with them. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import os

from benchmarks import harness_agreement as ha
from benchmarks.common import RESULTS, run_script


class FlopCounter:
    """Tokens through the decoder body and rows through the LM head (forward hooks), and their model FLOPs."""

    def __init__(self, model) -> None:
        from compactlm.hardware import forward_flops_per_token

        body, head = getattr(model, model.base_model_prefix), model.get_output_embeddings()
        self.body_flops, self.head_flops = forward_flops_per_token(model, lm_head=False), 2 * head.weight.numel()
        self.tokens = self.rows = 0

        def count_tokens(_module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.tokens += 0 if ids is None else ids.numel()

        def count_rows(_module, args, _out):
            self.rows += args[0].shape[:-1].numel()

        body.register_forward_pre_hook(count_tokens, with_kwargs=True)
        head.register_forward_hook(count_rows)

    def take(self) -> tuple[int, int]:
        """(tokens, model FLOPs) since the last call."""
        out = self.tokens, self.tokens * self.body_flops + self.rows * self.head_flops
        self.tokens = self.rows = 0
        return out


def main(argv: list[str] | None = None) -> int:
    import logging

    import torch

    from compactlm.evaluate import get_task
    from compactlm.hardware import device_kind, measured_rates, mfu
    from compactlm.io import write_json_atomic
    from compactlm.models import load_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ha.add_run_flags(p)
    p.add_argument("--repeats", type=int, default=1, help="time each engine this often, interleaved; keep the fastest")
    p.add_argument("--also-unshared", action="store_true",
                   help="also time compactlm with --no-share-prefix (every option scored in full)")
    p.add_argument("--json", default=str(RESULTS / "eval_speed.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    tasks = [get_task(t).name for t in args.tasks.split(",")]
    model, tokenizer = load_model(args.model)
    counter = FlopCounter(model)
    peak = measured_rates(model.config, next(model.parameters()).device)["fp32"]  # both engines run fp32
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
                    counter.take()
                    _, _, seconds = ha.run_harness(model, tokenizer, [task], indices, args.batch_size, args.data_dir)
                    row["harness_s"] = min(row["harness_s"], seconds)
                    row["harness_tokens"], row["harness_flops"] = counter.take()
                    continue
                counter.take()
                res = ha.run_compactlm(model, tokenizer, [task], args.limit, args.seed, args.batch_size, args.data_dir,
                                       share_prefix=engine == "ours")[task]
                indices = {task: [s["index"] for s in res["samples"]]}
                key = "compactlm_s" if engine == "ours" else "compactlm_unshared_s"
                row["n"], row[key] = res["n"], min(row[key], res["seconds"])
                row[key[:-2] + "_tokens"], row[key[:-2] + "_flops"] = counter.take()
            if row["harness_s"] == float("inf"):
                counter.take()
                _, _, row["harness_s"] = ha.run_harness(model, tokenizer, [task], indices, args.batch_size, args.data_dir)
                row["harness_tokens"], row["harness_flops"] = counter.take()
        for engine in ("compactlm", "compactlm_unshared", "harness"):  # tokens/s and MFU of the fastest run
            if engine + "_s" in row:
                row[engine + "_tokens_per_s"] = row[engine + "_tokens"] / row[engine + "_s"]
                row[engine + "_mfu"] = mfu(row[engine + "_flops"] / row[engine + "_tokens"], row[engine + "_tokens_per_s"], peak)
        rows.append(row)

    engines = ["compactlm"] + (["compactlm_unshared"] if args.also_unshared else []) + ["harness"]
    label = {"compactlm": "compactlm", "compactlm_unshared": "unshared", "harness": "harness"}
    print(f"fp32, measured peak {peak:,.0f} GFLOP/s at this model's shapes; {device_kind(next(model.parameters()).device)}")
    head = f"{'task':16s} {'n':>5s}" + "".join(f" {label[e] + ' ex/s':>15s} {'tok/s':>8s} {'MFU':>6s}" for e in engines) + \
        f" {'speed-up':>9s}"
    print(head)
    print("-" * len(head))
    for r in rows + [{"task": "total", "n": sum(r["n"] for r in rows),
                      **{k: sum(r[k] for r in rows) for k in rows[0] if k.endswith(("_s", "_tokens", "_flops"))}}]:
        line = f"{r['task']:16s} {r['n']:5d}"
        for e in engines:
            line += (f" {r['n'] / r[e + '_s']:15.2f} {r[e + '_tokens'] / r[e + '_s']:8.0f}"
                     f" {mfu(r[e + '_flops'] / r[e + '_tokens'], r[e + '_tokens'] / r[e + '_s'], peak):6.1%}")
        print(line + f" {r['harness_s'] / r['compactlm_s']:8.2f}x")
    import lm_eval

    out = {"model": args.model, "limit": args.limit, "batch_size": args.batch_size, "seed": args.seed, "repeats": args.repeats,
           "lm_eval": lm_eval.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "machine": device_kind(next(model.parameters()).device), "cpus": os.cpu_count(), "precision": "fp32",
           "peak_gflops": peak, "mfu": {r["task"]: {e: r[e + "_mfu"] for e in engines} for r in rows},
           "load_average": [load_before, os.getloadavg()[0]], "rows": rows}
    write_json_atomic(args.json, out)
    print(f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}; wrote {args.json}")
    return 0


if __name__ == "__main__":
    run_script(main)
