"""Perplexity with and without a BOS token at the start of each window: what a family expects.

    python -m benchmarks.bos_effect --model gemma3-270m [--windows 8] [--window 512]

compactlm packs blocks and scores perplexity windows without a BOS token. This scores the same
``--windows`` windows of the C4 sample in ``exllamav2`` both ways (the BOS itself is never a target).
Writes ``benchmarks/results/bos_effect_<model>.json``.
"""

from __future__ import annotations

import argparse
import math

from benchmarks.common import RESULTS, run_script


def main(argv: list[str] | None = None) -> int:
    import torch

    from compactlm import load_model
    from compactlm.data import read_documents
    from compactlm.hardware import device_kind
    from compactlm.io import write_json_atomic

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--window", type=int, default=512)
    args = p.parse_args(argv)
    model, tokenizer = load_model(args.model)
    ids = tokenizer("\n\n".join(read_documents("exllamav2:c4")), add_special_tokens=False)["input_ids"]
    result = {}
    for bos in (False, True):
        nll, count = 0.0, 0
        for i in range(args.windows):
            prefix = [tokenizer.bos_token_id] if bos else []
            x = torch.tensor([prefix + ids[i * args.window:(i + 1) * args.window]])
            with torch.no_grad():
                logits = model(x).logits[0, len(prefix):-1].float()
            nll += float(torch.nn.functional.cross_entropy(logits, x[0, len(prefix) + 1:], reduction="sum"))
            count += logits.shape[0]
        result["with_bos" if bos else "without_bos"] = math.exp(nll / count)
    machine = device_kind("cpu")
    print(f"{args.model}: C4 perplexity over {args.windows} x {args.window} tokens ({machine})")
    print(f"  without BOS {result['without_bos']:.2f}   with BOS {result['with_bos']:.2f}")
    write_json_atomic(RESULTS / f"bos_effect_{args.model}.json", {"model": args.model, **result, "machine": machine,
                                                                  "windows": args.windows, "window": args.window})
    return 0


if __name__ == "__main__":
    run_script(main)
