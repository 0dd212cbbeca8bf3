"""The memory of a 262K-token vocabulary's logits, chunked as compactlm computes them vs all at once.

    python -m benchmarks.large_vocab_memory [--model gemma3-270m] [--batch 4] [--seq-len 512]

On the real teacher (Gemma 3 270M by default: 262,144 x 640 tied embedding), in one process, the
peak resident memory above the loaded model (sampled every 2 ms) of:

- the held-out LM loss of ``--batch`` blocks (``lm_loss``; used by the search proxy, the layer-loss
  importance metric and the run's evaluation): ``logit_chunk_tokens(V)`` tokens of logits at a time
  vs the whole batch's logits;
plus the analytic size of one batch's float32 logits, so the table says what the chunking saves.
(The distillation loss is chunked by ``loss.chunk_size``; its memory is in ``compactlm plan``'s model.)
Writes ``benchmarks/results/large_vocab_memory.json``. Nothing here runs in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
from unittest import mock

from benchmarks.common import RESULTS, PeakRSS, run_script

MB = 1e6


def _lm_loss_peak(model, blocks, batch: int, chunked: bool) -> tuple[float, float]:
    import compactlm.importance.loss as loss_module
    from compactlm import lm_loss

    whole = mock.patch.object(loss_module, "logit_chunk_tokens", lambda vocab: 1 << 40)
    gc.collect()
    with (contextlib.nullcontext() if chunked else whole), PeakRSS() as m:
        value = lm_loss(model, blocks, batch_size=batch)
    return (m.peak - m.base) / MB, value


def main(argv: list[str] | None = None) -> int:
    import torch

    from compactlm import load_model
    from compactlm.arch import logit_chunk_tokens
    from compactlm.data import load_blocks
    from compactlm.hardware import device_kind
    from compactlm.io import write_json_atomic

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--batch", type=int, default=4, help="blocks per LM-loss batch")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--out", default=str(RESULTS / "large_vocab_memory.json"))
    args = p.parse_args(argv)

    model, tokenizer = load_model(args.model)
    vocab = model.config.vocab_size
    blocks = load_blocks("exllamav2:c4", tokenizer, seq_len=args.seq_len, num_samples=1,
                         heldout_samples=args.batch, seed=0).heldout
    rows = []
    for chunked in (True, False):
        peak, value = _lm_loss_peak(model, blocks, args.batch, chunked)
        tokens = logit_chunk_tokens(vocab) if chunked else args.batch * args.seq_len
        rows.append({"stage": "held-out LM loss", "batch": f"{args.batch} x {args.seq_len}",
                     "logits_at_once": f"{min(tokens, args.batch * args.seq_len)} tokens",
                     "peak_mb": peak, "value": value})
    logits_mb = args.batch * args.seq_len * vocab * 4 / MB
    machine = device_kind("cpu")
    print(f"\n{args.model}: vocabulary {vocab:,}; one batch's float32 logits ({args.batch} x {args.seq_len} tokens) "
          f"= {logits_mb:,.0f} MB. Peak resident memory above the loaded model; {machine}; torch {torch.__version__}\n")
    print(f"{'stage':<32}{'batch':>10}{'logits at once':>18}{'peak MB':>10}{'value':>10}")
    for r in rows:
        print(f"{r['stage']:<32}{r['batch']:>10}{r['logits_at_once']:>18}{r['peak_mb']:>10,.0f}{r['value']:>10.4f}")
    write_json_atomic(args.out, {"model": args.model, "vocab_size": vocab, "batch_logits_mb": logits_mb,
                                 "rows": rows, "machine": machine, "seq_len": args.seq_len})
    return 0


if __name__ == "__main__":
    run_script(main)
