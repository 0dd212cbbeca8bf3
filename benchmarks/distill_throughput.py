"""Distillation step cost vs. its parts, and memory of the chunked loss vs. full-vocabulary fp32 KL.

On the embedded teacher (SmolLM2-135M) and a student pruned from it (MLP 1536 -> 768 through
compactlm.importance + compactlm.prune), time interleaved repetitions of
  (1) teacher forward alone (no grad),
  (2) student forward + backward + AdamW step alone (plain LM loss),
  (3) the full distillation step (teacher forward + student + chunked forward KL + backward + step),
and report tokens/s and MFU of each and the ratio (3) / ((1) + (2)); the goal is <= 1.1.
MFU (compactlm.hardware): FLOPs/token 2N_t for (1), 6N_s for (2), 2N_t + 6N_s for (3) (N: matmul weights incl.
LM head), against the GEMM rate measured at the shapes of the teacher for (1) and of the student for (2) and (3)
(as the trainer reports it), in the precision that runs (--precision auto: hardware.choose_precision).
Then, in fresh subprocesses, the peak memory added by the logit loss (forward + backward) for
chunked vs. unchunked evaluation at the same batch (peak RSS on CPU, max_memory_allocated on CUDA).

    python -m benchmarks.distill_throughput [--batch 4 --seq-len 256 --reps 3 --precision auto|bf16|fp32]

Prints a table and writes benchmarks/results/distill_throughput.json. Never asserts timings.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, run_child, run_script
from compactlm.config import ImportanceSection
from compactlm.distill.losses import IGNORE_INDEX, ChunkedLogitLoss, make_loss
from compactlm.distill.student import DistillModule
from compactlm.distill.teacher import TeacherOutputs
from compactlm.hardware import (
    PRECISIONS,
    choose_precision,
    device_kind,
    forward_flops_per_token,
    measured_rates,
    mfu,
    train_flops_per_token,
)
from compactlm.io import write_json_atomic
from compactlm.models import load_model


def make_student(teacher, blocks: torch.Tensor, intermediate_size: int):
    from compactlm.importance import estimate_importance
    from compactlm.prune import prune

    scores = estimate_importance(teacher, blocks, ImportanceSection(batch_size=4, layer_loss_samples=0), show_progress=False)
    student, _plan = prune(copy.deepcopy(teacher), scores, intermediate_size=intermediate_size)
    return student.float().train()


def loss_memory(chunk: int, tokens: int, device: str) -> float:
    """Peak extra memory (MiB) of the logit loss's forward + backward on random hidden states (run in a subprocess)."""
    torch.manual_seed(0)
    vocab, hidden = 49152, 576
    head = torch.nn.Linear(hidden, vocab, bias=False, device=device)
    t_head = torch.nn.Linear(hidden, vocab, bias=False, device=device)
    h = torch.randn(tokens, hidden, device=device, requires_grad=True)
    th = torch.randn(tokens, hidden, device=device)
    labels = torch.full((tokens,), IGNORE_INDEX, device=device)
    mask = torch.ones(tokens, device=device)
    loss = ChunkedLogitLoss(make_loss("forward_kl"), chunk or None)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak-RSS mark (VmHWM) to the current RSS
        base = _proc_kib("VmRSS")
    loss(h, head, th, t_head, labels, mask, 1.0 / tokens, 0.0).total.backward()
    if device == "cuda":
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return (_proc_kib("VmHWM") - base) / 1024


def _proc_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument("--intermediate-size", type=int, default=768)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--memory-only", type=int, default=None, help=argparse.SUPPRESS)  # subprocess mode: chunk size
    a = p.parse_args()
    if a.memory_only is not None:
        print(json.dumps(loss_memory(a.memory_only, a.batch * a.seq_len, a.device)))
        return

    device = torch.device(a.device)
    teacher, _tok = load_model("smollm2-135m")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, teacher.config.vocab_size, (a.batch, a.seq_len), generator=gen).to(device)
    student = make_student(teacher, torch.randint(0, teacher.config.vocab_size, (8, 128), generator=gen),
                           a.intermediate_size).to(device)
    choice = choose_precision(a.precision, student.config, device)  # what the trainer would run
    bf16 = choice.bf16
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    # FLOPs per token and the measured peak (GFLOP/s) each part is held against; see the docstring
    flops = {"teacher_forward": forward_flops_per_token(teacher), "student_step": train_flops_per_token(student)}
    flops["distill_step"] = flops["teacher_forward"] + flops["student_step"]
    rows = a.batch * a.seq_len      # the GEMM rate depends on the rows multiplied: measure at the real ones
    peaks = {"teacher_forward": measured_rates(teacher.config, device, rows=rows)[choice.precision],
             "student_step": measured_rates(student.config, device, rows=rows)[choice.precision]}
    peaks["distill_step"] = peaks["student_step"]
    teacher = teacher.to(device=device, dtype=torch.bfloat16 if bf16 else torch.float32).eval().requires_grad_(False)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, :-1] = ids[:, 1:]
    mask = torch.ones(ids.shape, device=device)
    n = ids.numel()
    kd = DistillModule(student, ChunkedLogitLoss(make_loss("forward_kl"), a.chunk_size))
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def teacher_fwd():  # what a teacher forward is on its own: logits included
        with torch.no_grad(), amp:
            return teacher(input_ids=ids, use_cache=False).logits

    def student_step():  # a plain transformers training step with the LM loss
        with amp:
            loss = student(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def distill_step():  # compactlm's step: teacher hidden states, then chunked LM heads + forward KL
        with torch.no_grad(), amp:
            t_hidden = teacher.model(input_ids=ids, use_cache=False).last_hidden_state
        with amp:
            out = kd(ids, labels, mask, TeacherOutputs(t_hidden, teacher.lm_head), kd_scale=1.0 / n, clm_scale=0.0)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    parts = {"teacher_forward": teacher_fwd, "student_step": student_step, "distill_step": distill_step}
    times: dict[str, list[float]] = {k: [] for k in parts}
    for rep in range(a.reps + 1):  # the first round warms up and is dropped
        for name, fn in parts.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if rep:
                times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    ratio = best["distill_step"] / (best["teacher_forward"] + best["student_step"])
    util = {k: mfu(flops[k], n / best[k], peaks[k]) for k in parts}

    memory = {}
    for label, chunk in (("chunked", a.chunk_size), ("unchunked_fp32", 0)):
        memory[label] = run_child("benchmarks.distill_throughput", "--memory-only", chunk, "--batch", a.batch,
                                  "--seq-len", a.seq_len, "--device", a.device)

    print(f"\nSmolLM2-135M teacher, student MLP {a.intermediate_size} "
          f"({sum(p.numel() for p in student.parameters()) / 1e6:.1f}M), "
          f"batch {a.batch} x {a.seq_len} tokens, best of {a.reps}\n{choice.describe()}")
    print(f"{'part':<22}{'seconds':>10}{'tokens/s':>12}{'GFLOP/tok':>11}{'peak GFLOP/s':>14}{'MFU':>8}")
    for name in parts:
        print(f"{name:<22}{best[name]:>10.3f}{n / best[name]:>12,.0f}{flops[name] / 1e9:>11.3f}{peaks[name]:>14,.0f}"
              f"{util[name]:>8.1%}")
    print(f"distill / (teacher + student) = {ratio:.3f}   (goal <= 1.1; load average {os.getloadavg()[0]:.1f})")
    print(f"logit-loss peak memory, fwd+bwd over {n} tokens x 49,152 vocab: chunked({a.chunk_size}) "
          f"{memory['chunked']:.0f} MiB vs unchunked fp32 {memory['unchunked_fp32']:.0f} MiB")
    record = {"batch": a.batch, "seq_len": a.seq_len, "tokens_per_step": n, "precision": choice.precision,
              "precision_choice": choice.to_dict(), "device": str(device), "chunk_size": a.chunk_size, "reps": a.reps,
              "seconds": best,
              "tokens_per_s": {k: n / v for k, v in best.items()}, "flops_per_token": flops, "peak_gflops": peaks,
              "mfu": util, "ratio_distill_vs_sum": ratio,
              "loss_peak_memory_mib": memory, "all_seconds": times, "threads": torch.get_num_threads(),
              "load_average": os.getloadavg(), "machine": device_kind(device), "cpus": os.cpu_count()}
    write_json_atomic(RESULTS / "distill_throughput.json", record)


if __name__ == "__main__":
    run_script(main)
