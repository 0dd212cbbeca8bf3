"""Does distillation beat the plain LM loss for the same tokens? (Minitron best practice #5)

Embedded teacher (SmolLM2-135M) -> activation importance -> MLP pruned 1536 -> 768 (~95M
parameters) -> retrain on the same token budget of ../shared/data/text/ with
  (a) forward-KL distillation from the teacher, and
  (b) the plain next-token (LM) loss,
then WikiText-2 (raw, test) perplexity in non-overlapping windows of --window tokens for the
teacher, the pruned model before retraining, (a) and (b).

    python -m benchmarks.distill_quality [--tokens 400K --seq-len 512 --lr 1e-4 --eval-windows N]

Prints a table and writes benchmarks/results/distill_quality.json. Takes about an hour on a
2-core CPU at the defaults; --tokens 40K --eval-windows 40 gives a ~10-minute version.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, SHARED_DATA, run_script
from compactlm.config import ImportanceSection


def wikitext2_text(path: Path = SHARED_DATA / "wikitext2" / "wikitext-2-raw-v1.test.jsonl") -> str:
    return "\n\n".join(json.loads(line)["text"] for line in path.read_text().splitlines())


def run_quality(tokens: int = 400_000, seq_len: int = 512, lr: float = 1e-4, batch_size: int = 8,
                micro_batch_size: int = 4, intermediate_size: int = 768, window: int = 512,
                eval_windows: int | None = None, calibration_samples: int = 32, data: Path = SHARED_DATA / "text",
                precision: str = "bf16", variants: tuple[str, ...] = ("distill_kl", "lm_loss")) -> dict:
    """The whole comparison; returns the JSON record. Used by the benchmark and the slow test."""
    from compactlm.data import load_blocks
    from compactlm.distill import LossArgs, TrainArgs, train
    from compactlm.evaluate import perplexity
    from compactlm.importance import estimate_importance
    from compactlm.models import load_model
    from compactlm.prune import prune

    t_start = time.time()
    teacher, tok = load_model("smollm2-135m")
    blocks = load_blocks(str(data), tok, seq_len=seq_len, heldout_samples=8, seed=0)
    train_blocks = blocks.train[:math.ceil(tokens / seq_len)]
    steps = max(1, tokens // (seq_len * batch_size))
    text = wikitext2_text()
    bf16 = precision == "bf16"

    def ppl(model) -> float:
        return perplexity(model.eval(), tok, text, window=window, limit=eval_windows, bf16=bf16, batch_size=4)["ppl"]

    scores = estimate_importance(teacher, blocks.train[:calibration_samples], ImportanceSection(batch_size=4,
                                 layer_loss_samples=0), show_progress=False)
    pruned, _plan = prune(copy.deepcopy(teacher), scores, intermediate_size=intermediate_size)
    pruned = pruned.float()
    result = {"tokens": steps * batch_size * seq_len, "steps": steps, "seq_len": seq_len, "batch_size": batch_size,
              "lr": lr, "precision": precision, "wikitext2_window": window, "eval_windows": eval_windows,
              "student_params_m": sum(p.numel() for p in pruned.parameters()) / 1e6,
              "teacher_params_m": sum(p.numel() for p in teacher.parameters()) / 1e6,
              "ppl": {"teacher": ppl(teacher), "pruned": ppl(pruned)}, "val": {}}
    args = TrainArgs(lr=lr, min_lr=lr / 10, batch_size=batch_size, micro_batch_size=micro_batch_size, max_steps=steps,
                     val_every=0, checkpoint_every=0, keep_checkpoints=1, precision=precision)
    with tempfile.TemporaryDirectory() as tmp:
        for name, loss, kd_teacher in (("distill_kl", LossArgs(), teacher),
                                       ("lm_loss", LossArgs(clm_weight=1.0, intermediate="off"), None)):
            if name not in variants:
                continue
            student = copy.deepcopy(pruned).train()
            t0 = time.time()
            out = train(student, train_blocks, Path(tmp) / name, teacher=kd_teacher, heldout=blocks.heldout,
                        loss=loss, args=args)
            result["ppl"][name] = ppl(student)
            result["val"][name] = {k: v for k, v in out.metrics.items() if k.startswith("val")}
            result[f"{name}_seconds"] = time.time() - t0
    result["total_seconds"] = time.time() - t_start
    return result


def main() -> None:
    from compactlm.distill.config import parse_tokens
    from compactlm.io import write_json_atomic

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=parse_tokens, default=parse_tokens("400K"))
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--window", type=int, default=512, help="WikiText-2 perplexity window (default: %(default)s)")
    p.add_argument("--eval-windows", type=int, default=None, help="score only the first N windows (default: all)")
    p.add_argument("--out", default=str(RESULTS / "distill_quality.json"))
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    r = run_quality(tokens=a.tokens, seq_len=a.seq_len, lr=a.lr, batch_size=a.batch_size, window=a.window,
                    eval_windows=a.eval_windows)
    print(f"\nWikiText-2 test perplexity (window {a.window}, {a.eval_windows or 'all'} windows); "
          f"retraining: {r['tokens']:,} tokens of ../shared/data/text, {r['steps']} steps, lr {a.lr}")
    print(f"{'model':<34}{'params':>9}{'ppl':>10}")
    rows = [("teacher SmolLM2-135M", r["teacher_params_m"], "teacher"),
            ("pruned MLP 768, before retraining", r["student_params_m"], "pruned"),
            ("(a) + forward-KL distillation", r["student_params_m"], "distill_kl"),
            ("(b) + plain LM loss", r["student_params_m"], "lm_loss")]
    for label, params, key in rows:
        print(f"{label:<34}{params:>8.1f}M{r['ppl'][key]:>10.2f}")
    better = "beats" if r["ppl"]["distill_kl"] < r["ppl"]["lm_loss"] else "does not beat"
    print(f"distillation {better} the LM loss at this budget")
    write_json_atomic(a.out, r)


if __name__ == "__main__":
    run_script(main)
