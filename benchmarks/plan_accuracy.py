"""How close is `compactlm plan`? Predicted vs measured peak memory (RSS, CPU) of importance and distillation.

Each case runs in a fresh process; a thread samples the resident set every 5 ms from the start of the stage
(after the model loaded), so the figure is the stage's own peak. The prediction is the plan's single-device row
of that stage, with the same workload. Prints a table and writes benchmarks/results/plan_accuracy.json.

    nice .venv/bin/python benchmarks/plan_accuracy.py [--cases smollm2,random-0.5b]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "plan_accuracy.json"
SEQ, MICRO, IMP_BATCH = 512, 4, 8
RANDOM_05B = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_key_value_heads": 4,
              "num_hidden_layers": 24, "vocab_size": 49152, "tie_word_embeddings": True, "head_dim": 64}

CHILD = r"""
import json, sys, threading, time, dataclasses, tempfile
import torch
case, stage = sys.argv[1], sys.argv[2]
from compactlm.models import load_model
if case == "smollm2":
    model = load_model("smollm2-135m", with_tokenizer=False)
else:
    from transformers import AutoModelForCausalLM, LlamaConfig
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**json.loads(sys.argv[3]))).eval()
vocab = model.config.vocab_size
blocks = torch.randint(0, vocab, (16, %(seq)d), generator=torch.Generator().manual_seed(0))
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
peak, done = [rss()], [False]
def sample():
    while not done[0]:
        peak[0] = max(peak[0], rss()); time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
start = time.time()
if stage == "importance":
    from compactlm.importance import estimate_importance
    estimate_importance(model, blocks[:%(imp)d], batch_size=%(imp)d, layer_loss_samples=%(imp)d, precision="auto")
else:
    import copy
    from compactlm.distill import TrainArgs, distill
    from compactlm.config import LossArgs
    student = copy.deepcopy(model).float().train()
    args = TrainArgs(batch_size=%(micro)d, micro_batch_size=%(micro)d, max_steps=2, val_every=0, checkpoint_every=0,
                     device="cpu")
    distill(student, model, blocks, tempfile.mkdtemp(), heldout=blocks[:2], loss=LossArgs(), args=args)
done[0] = True
print(json.dumps({"peak": max(peak[0], rss()), "seconds": time.time() - start}))
""" % {"seq": SEQ, "imp": IMP_BATCH, "micro": MICRO}


def predict(case: str, stage: str) -> int:
    from transformers import LlamaConfig

    from compactlm.hardware import native_bf16
    from compactlm.plan import DeviceSpec, Workload, build_plan, load_config, model_shape

    config = load_config("smollm2-135m") if case == "smollm2" else LlamaConfig(**RANDOM_05B)
    shape = model_shape(config)
    work = Workload(micro_batch=MICRO, seq_len=SEQ, precision="bf16" if native_bf16("cpu") else "fp32",
                    importance_batch=IMP_BATCH, layer_loss=True, intermediate=False)
    plan = build_plan(shape, shape, work, DeviceSpec("cpu", "cpu", 1 << 40))
    return plan.row(stage, "single").total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", default="smollm2,random-0.5b")
    parser.add_argument("--stages", default="importance,distillation")
    opts = parser.parse_args()
    from compactlm.hardware import cpu_name

    rows = []
    for case in opts.cases.split(","):
        for stage in opts.stages.split(","):
            out = subprocess.run([sys.executable, "-c", CHILD, case, stage, json.dumps(RANDOM_05B)],
                                 capture_output=True, text=True, check=True)
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            predicted = predict(case, stage)
            rows.append({"model": case, "stage": stage, "predicted_gib": round(predicted / 2 ** 30, 2),
                         "measured_gib": round(measured["peak"] / 2 ** 30, 2),
                         "error": round(predicted / measured["peak"] - 1, 3), "seconds": round(measured["seconds"], 1)})
            r = rows[-1]
            print(f"{r['model']:<14}{r['stage']:<14}{r['predicted_gib']:>10.2f}{r['measured_gib']:>10.2f}"
                  f"{r['error']:>+9.1%}{r['seconds']:>8.1f}", flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": cpu_name(), "seq_len": SEQ, "micro_batch": MICRO,
                                   "importance_batch": IMP_BATCH, "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
