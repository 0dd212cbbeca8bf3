"""How much each cut of the hidden size costs a real teacher, by importance and by random channel choice.

    python -m benchmarks.hidden_sensitivity --model gemma3-270m --scores runs/gemma3-270m/student/scores \\
        --hidden 608,576,512,448,384

Only ``hidden_size`` is pruned (every layer, head and neuron kept), with compactlm's activation
importance of the channels and with uniformly random channels; no retraining. Perplexity on
``--windows`` blocks of ``--seq-len`` tokens of the C4 sample in ``exllamav2`` (never used for
calibration). Writes ``benchmarks/results/hidden_sensitivity_<model>.json``.
"""

from __future__ import annotations

import argparse
import math

from benchmarks.common import RESULTS, run_script


def main(argv: list[str] | None = None) -> int:
    import torch

    from compactlm import estimate_importance, lm_loss, load_model, prune
    from compactlm.config import ImportanceSection
    from compactlm.data import load_blocks
    from compactlm.hardware import device_kind
    from compactlm.importance import ImportanceScores
    from compactlm.io import write_json_atomic
    from compactlm.prune import apply_plan, select_units

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--scores", default=None, help="saved importance scores of the model (default: computed here)")
    p.add_argument("--hidden", default="608,576,512,448,384")
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    model, tokenizer = load_model(args.model)
    heldout = load_blocks("exllamav2:c4", tokenizer, seq_len=args.seq_len, num_samples=1,
                          heldout_samples=args.windows, seed=0).heldout
    if args.scores:
        scores = ImportanceScores.load(args.scores)
    else:
        calibration = load_blocks("exllamav2:wiki", tokenizer, seq_len=512, num_samples=64, seed=0).train
        scores = estimate_importance(model, calibration, ImportanceSection(layer_loss_samples=0), show_progress=False)
    source = scores.architecture
    rows = [{"hidden_size": source.hidden_size, "importance_ppl": math.exp(lm_loss(model, heldout, 4)),
             "random_ppl": None}]
    for hidden in map(int, args.hidden.split(",")):
        student, plan = prune(model, scores, hidden_size=hidden)
        by_importance = math.exp(lm_loss(student, heldout, 4))
        del student
        channels = torch.rand(source.hidden_size, generator=torch.Generator().manual_seed(0))
        random_plan = select_units(source, plan.target, layers=plan.layers, neurons=scores.neurons(),
                                   heads=scores.heads(), channels=channels)
        by_chance = math.exp(min(lm_loss(apply_plan(model, random_plan), heldout, 4), 50.0))
        rows.append({"hidden_size": hidden, "importance_ppl": by_importance, "random_ppl": by_chance})
    machine = device_kind("cpu")
    print(f"\n{args.model}: hidden size pruned alone, no retraining; C4 perplexity over {args.windows} x "
          f"{args.seq_len} tokens ({machine})\n")
    print(f"{'hidden_size':>12}{'channels cut':>14}{'importance ppl':>16}{'random ppl':>14}")
    for r in rows:
        cut = 1 - r["hidden_size"] / source.hidden_size
        rand = "-" if r["random_ppl"] is None else f"{r['random_ppl']:,.0f}"
        print(f"{r['hidden_size']:>12}{cut:>14.0%}{r['importance_ppl']:>16,.1f}{rand:>14}")
    write_json_atomic(args.out or RESULTS / f"hidden_sensitivity_{args.model}.json",
                      {"model": args.model, "windows": args.windows, "seq_len": args.seq_len, "rows": rows,
                       "machine": machine})
    return 0


if __name__ == "__main__":
    run_script(main)
