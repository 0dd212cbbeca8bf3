"""Does Torch-Pruning's LLM example run on this transformers? Times its pruner on a tiny random Llama.

    pip install torch-pruning==1.6.1
    python -m benchmarks.torch_pruning_probe [--timeout 120] [--hidden 64] [--layers 2]

Builds a random Llama (hidden ``--hidden``, ``--layers`` layers, GQA 4/2 heads) and runs the pruner of
Torch-Pruning's examples/LLMs/prune_llm.py (BasePruner, GroupMagnitudeImportance(p=2, mean), ratio 0.25
for hidden size and heads, lm_head ignored, round_to 4) in a subprocess with a timeout. Prints whether it
finished and how long it took, and writes ``benchmarks/results/torch_pruning_probe.json``; ``benchmarks.peers``
implements the example's criterion and rule itself when this does not finish.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS, run_script

CHILD = """
import time, torch, transformers, torch_pruning as tp
from transformers import AutoModelForCausalLM, LlamaConfig
cfg = LlamaConfig(vocab_size=128, hidden_size={hidden}, intermediate_size={hidden} * 3 // 2, num_hidden_layers={layers},
                  num_attention_heads=4, num_key_value_heads=2, head_dim={hidden} // 4, tie_word_embeddings=False)
model = AutoModelForCausalLM.from_config(cfg).eval()
heads = {{}}
for name, m in model.named_modules():
    if name.endswith("self_attn"):
        heads[m.q_proj] = cfg.num_attention_heads
        heads[m.k_proj] = heads[m.v_proj] = cfg.num_key_value_heads
start = time.perf_counter()
pruner = tp.pruner.BasePruner(model, example_inputs=torch.randint(0, 128, (1, 8)),
    importance=tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"), global_pruning=False,
    output_transform=lambda out: out.logits, pruning_ratio=0.25, ignored_layers=[model.lm_head], num_heads=heads,
    prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.25, round_to=4)
for group in pruner.step(interactive=True):
    group.prune()
print("finished", round(time.perf_counter() - start, 2), tp.__version__, transformers.__version__)
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--timeout", type=float, default=120)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "torch_pruning_probe.json")
    args = p.parse_args(argv)
    import importlib.metadata as md

    from compactlm.io import write_json_atomic

    versions = {}
    for name in ("torch-pruning", "transformers", "torch"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    if versions["torch-pruning"] is None:
        print("torch-pruning is not installed: pip install torch-pruning==1.6.1", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", CHILD.format(hidden=args.hidden, layers=args.layers)],
                              capture_output=True, text=True, timeout=args.timeout)
        finished = done.returncode == 0 and "finished" in done.stdout
        outcome = done.stdout.strip().splitlines()[-1] if finished else f"failed: {done.stderr.strip()[-300:]}"
    except subprocess.TimeoutExpired:
        finished, outcome = False, f"did not finish in {args.timeout:g} s"
    result = {"finished": finished, "outcome": outcome, "seconds": round(time.perf_counter() - start, 1),
              "model": {"hidden_size": args.hidden, "num_hidden_layers": args.layers}, "versions": versions}
    print(json.dumps(result, indent=2))
    write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    run_script(main)
