"""How close is `compactlm plan`? Predicted vs measured peak memory (RSS, CPU) of importance and distillation.

Each case runs in a fresh process; a thread samples the resident set every 5 ms from the start of the stage
(after the model loaded), so the figure is the stage's own peak. The prediction is the plan's single-device row
of that stage, with the same workload. Prints a table and writes benchmarks/results/plan_accuracy.json.

    nice .venv/bin/python -m benchmarks.plan_accuracy [--cases smollm2,random-0.5b]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from benchmarks.common import RESULTS, PeakRSS, run_child, run_script
from compactlm.config import ImportanceSection

SEQ, MICRO, IMP_BATCH = 512, 4, 8
RANDOM_05B = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_key_value_heads": 4,
              "num_hidden_layers": 24, "vocab_size": 49152, "tie_word_embeddings": True, "head_dim": 64}


def child(case: str, stage: str) -> None:
    """One case in this (fresh) process: load the model, run the stage sampling the resident set, print JSON."""
    import copy

    import torch

    from compactlm.config import LossArgs
    from compactlm.distill import TrainArgs, distill
    from compactlm.importance import estimate_importance
    from compactlm.models import load_model

    if case == "smollm2":
        model = load_model("smollm2-135m", with_tokenizer=False)
    else:
        from transformers import AutoModelForCausalLM, LlamaConfig

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(LlamaConfig(**RANDOM_05B)).eval()
    blocks = torch.randint(0, model.config.vocab_size, (16, SEQ), generator=torch.Generator().manual_seed(0))
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp, PeakRSS(interval=0.005) as rss:
        if stage == "importance":
            estimate_importance(model, blocks[:IMP_BATCH], ImportanceSection(batch_size=IMP_BATCH, layer_loss_samples=IMP_BATCH),
                                precision="auto")
        else:
            student = copy.deepcopy(model).float().train()
            args = TrainArgs(batch_size=MICRO, micro_batch_size=MICRO, max_steps=2, val_every=0, checkpoint_every=0,
                             device="cpu")
            distill(student, model, blocks, tmp, heldout=blocks[:2], loss=LossArgs(), args=args)
    print(json.dumps({"peak": rss.peak, "seconds": time.time() - start}))


def predict(case: str, stage: str) -> int:
    from transformers import LlamaConfig

    from compactlm.hardware import native_bf16
    from compactlm.sizing import DeviceSpec, Workload, build_plan, load_config, model_shape

    config = load_config("smollm2-135m") if case == "smollm2" else LlamaConfig(**RANDOM_05B)
    shape = model_shape(config)
    work = Workload(micro_batch=MICRO, seq_len=SEQ, precision="bf16" if native_bf16("cpu") else "fp32",
                    importance_batch=IMP_BATCH, layer_loss=True, intermediate=False)
    plan = build_plan(shape, shape, work, DeviceSpec("cpu", "cpu", 1 << 40))
    return plan.row(stage, "single").total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="smollm2,random-0.5b")
    parser.add_argument("--stages", default="importance,distillation")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)   # CASE STAGE: one measurement, in this process
    opts = parser.parse_args()
    if opts.child:
        return child(*opts.child)
    from compactlm.hardware import cpu_name
    from compactlm.io import write_json_atomic

    rows = []
    for case in opts.cases.split(","):
        for stage in opts.stages.split(","):
            measured = run_child("benchmarks.plan_accuracy", "--child", case, stage)
            predicted = predict(case, stage)
            rows.append({"model": case, "stage": stage, "predicted_gib": round(predicted / 2 ** 30, 2),
                         "measured_gib": round(measured["peak"] / 2 ** 30, 2),
                         "error": round(predicted / measured["peak"] - 1, 3), "seconds": round(measured["seconds"], 1)})
            r = rows[-1]
            print(f"{r['model']:<14}{r['stage']:<14}{r['predicted_gib']:>10.2f}{r['measured_gib']:>10.2f}"
                  f"{r['error']:>+9.1%}{r['seconds']:>8.1f}", flush=True)
    out = RESULTS / "plan_accuracy.json"
    write_json_atomic(out, {"machine": cpu_name(), "seq_len": SEQ, "micro_batch": MICRO, "importance_batch": IMP_BATCH,
                            "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    run_script(main)
