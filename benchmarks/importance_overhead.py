"""Cost of the importance pass against a plain forward pass over the same tokens.

Arms, interleaved round-robin in one process so machine noise hits all of them alike:
  plain-lm    full model forward (decoder + LM head logits), what a user's eval pass costs
  plain-body  decoder forward without the LM head (the importance pass skips logits too)
  importance  decoder forward with every hook (neurons, heads, channels, residual/BI)
Peak memory of each arm is measured in a fresh subprocess, so one arm's allocations cannot
hide another's: on CPU the resident set is sampled every 2 ms while the arm runs (the GGUF
de-quantisation peak at load time would mask ru_maxrss); on CUDA, peak allocated bytes.
MFU (compactlm.hardware): FLOPs/token 2N for plain-lm (N: matmul weights incl. LM head), 2N without the LM head
for plain-body and importance, against the GEMM rate measured at the model's shapes in the precision all arms
run in (--precision auto: hardware.choose_precision, as compactlm importance resolves it).

    python -m benchmarks.importance_overhead [--model smollm2-135m] [--data exllamav2:wiki] [--precision auto]
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch

from benchmarks.common import RESULTS, PeakRSS, run_child, run_script
from compactlm.config import ImportanceSection

ARMS = ("plain-lm", "plain-body", "importance")


def setup(args):
    from compactlm import load_model
    from compactlm.data import load_blocks

    model, tok = load_model(args.model, device=args.device)
    blocks = load_blocks(args.data, tok, seq_len=args.seq_len, num_samples=args.batches * args.batch_size, seed=0).train
    return model, blocks


def run_arm(arm: str, model, blocks, batch_size: int, precision: str = "fp32") -> float:
    from compactlm.arch import adapter_for
    from compactlm.importance import estimate_importance

    device = next(model.parameters()).device
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        if arm == "importance":
            estimate_importance(model, blocks, ImportanceSection(batch_size=batch_size, layer_loss_samples=0),
                                show_progress=False, precision=precision)
        else:
            net = model if arm == "plain-lm" else adapter_for(model.config).decoder_body(model)
            for i in range(0, len(blocks), batch_size):
                net(input_ids=blocks[i:i + batch_size].to(device), use_cache=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_memory_child(args) -> None:
    """Subprocess entry: load, record baseline, run one arm, print peak memory in MiB."""
    model, blocks = setup(args)
    cuda = args.device.startswith("cuda")
    gc.collect()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run_arm(args.memory_arm, model, blocks, args.batch_size, args.precision)
        peak = torch.cuda.max_memory_allocated()
    else:
        with PeakRSS(interval=0.002) as rss:
            run_arm(args.memory_arm, model, blocks, args.batch_size, args.precision)
        base, peak = rss.base, rss.peak
    print(json.dumps({"baseline_mib": base / 2**20, "peak_mib": peak / 2**20}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default="exllamav2:wiki")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--batches", type=int, default=4, help="batches per timed repetition")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="of every arm; auto resolves with compactlm.hardware.choose_precision")
    p.add_argument("--out", default=str(RESULTS / "importance_overhead.json"))
    p.add_argument("--memory-arm", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_arm:
        return peak_memory_child(args)

    from compactlm.hardware import choose_precision, device_kind, forward_flops_per_token, mfu, peak_gflops
    from compactlm.io import write_json_atomic

    torch.set_num_threads(torch.get_num_threads())
    model, blocks = setup(args)
    choice = choose_precision(args.precision, model.config, args.device, next(model.parameters()).dtype)
    precision = choice.precision if choice.precision in ("bf16", "fp32") else "fp32"  # a bf16/fp16 model needs no autocast
    flops = {"plain-lm": forward_flops_per_token(model)}
    flops["plain-body"] = flops["importance"] = forward_flops_per_token(model, lm_head=False)
    run_arm("plain-lm", model, blocks[: args.batch_size], args.batch_size, precision)  # warm-up
    times = {arm: [] for arm in ARMS}
    for _ in range(args.repeats):
        for arm in ARMS:
            times[arm].append(run_arm(arm, model, blocks, args.batch_size, precision))
    tokens = blocks.numel()
    memory = {}
    for arm in ARMS:
        memory[arm] = run_child("benchmarks.importance_overhead", "--memory-arm", arm, "--model", args.model,
                                "--data", args.data, "--device", args.device, "--seq-len", args.seq_len,
                                "--batch-size", args.batch_size, "--batches", args.batches, "--precision", precision)

    best = {arm: min(t) for arm, t in times.items()}
    rows = []
    peak = peak_gflops(choice, model.config, args.device, args.batch_size * args.seq_len)  # at the rows multiplied
    print(f"{args.model}: {tokens:,} tokens per repetition (batch {args.batch_size} x {args.seq_len}), "
          f"{args.repeats} repetitions, device {args.device}")
    print(choice.describe())
    print(f"{'arm':<12} {'best s':>8} {'tok/s':>9} {'MFU':>7} {'vs plain-lm':>12} {'vs plain-body':>14} "
          f"{'peak MiB':>9} {'above load MiB':>15}")
    for arm in ARMS:
        m = memory[arm]
        util = mfu(flops[arm], tokens / best[arm], peak) if peak else None
        row = {"arm": arm, "seconds": times[arm], "best_seconds": best[arm], "tokens_per_second": tokens / best[arm],
               "flops_per_token": flops[arm], "mfu": util,
               "time_ratio_vs_plain_lm": best[arm] / best["plain-lm"], "time_ratio_vs_plain_body": best[arm] / best["plain-body"],
               "peak_mib": m["peak_mib"], "above_load_mib": m["peak_mib"] - m["baseline_mib"]}
        rows.append(row)
        shown = "-" if util is None else f"{util:.1%}"
        print(f"{arm:<12} {best[arm]:>8.2f} {row['tokens_per_second']:>9.0f} {shown:>7} {row['time_ratio_vs_plain_lm']:>12.3f} "
              f"{row['time_ratio_vs_plain_body']:>14.3f} {m['peak_mib']:>9.0f} {row['above_load_mib']:>15.0f}")
    extra = (memory["importance"]["peak_mib"] - memory["plain-lm"]["peak_mib"]) / memory["plain-lm"]["peak_mib"]
    extra_body = (memory["importance"]["peak_mib"] - memory["plain-body"]["peak_mib"]) / memory["plain-body"]["peak_mib"]
    print(f"importance vs plain-lm:   time x{best['importance'] / best['plain-lm']:.3f}, peak memory {extra:+.1%}")
    print(f"importance vs plain-body: time x{best['importance'] / best['plain-body']:.3f}, peak memory {extra_body:+.1%}")
    write_json_atomic(args.out, {"settings": vars(args), "tokens": tokens, "precision": choice.precision,
                                 "precision_choice": choice.to_dict(), "peak_gflops": peak,
                                 "mfu": {r["arm"]: r["mfu"] for r in rows}, "machine": device_kind(args.device),
                                 "arms": rows, "peak_memory_change_vs_plain_lm": extra,
                                 "peak_memory_change_vs_plain_body": extra_body})


if __name__ == "__main__":
    run_script(main)
