"""Run importance, search and eval through the CLI, in one process or under torchrun (tests/test_data_parallel.py).

Usage: data_parallel_entry.py FIXTURES OUT. FIXTURES holds ``model/`` (a tiny checkpoint),
``text.txt`` and ``tasks/`` (winogrande rows); every output lands under OUT.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from compactlm.cli import main

torch.set_num_threads(1)


def run(verb: list[str]) -> None:
    code = main(["-q", *verb])
    if code != 0:
        raise SystemExit(f"rank {os.environ.get('RANK', '0')}: compactlm {verb[0]} exited {code}")


def entry(fixtures: Path, out: Path) -> None:
    model, text, tasks = str(fixtures / "model"), str(fixtures / "text.txt"), str(fixtures / "tasks")
    data = ["--data", text, "--seq-len", "32"]
    # batches of 2: 11 blocks make 6 (the last one short), the 5 layer-loss blocks 3 and the 14 eval requests 7,
    # so some shares are uneven (4 + 3 batches)
    importance = ["importance", "--model", model, *data, "--samples", "11", "--batch-size", "2",
                  "--layer-loss-samples", "5", "--seq-aggregations", "mean,l2,var"]
    run([*importance, "--depth-tasks", "winogrande", "--depth-task-examples", "5", "--data-dir", tasks,
         "--out", str(out / "scores")])
    run([*importance, "--criterion", "taylor", "--layer-loss-samples", "0", "--out", str(out / "taylor")])
    run(["search", "--model", model, "--scores", str(out / "scores"), *data, "--heldout-samples", "5",
         "--target-params", "0.8", "--tolerance", "0.15", "--num-hidden-layers", "4,3", "--intermediate-size", "96,64",
         "--top-k", "1", "--distill-tokens", "128", "--batch-size", "4", "--micro-batch-size", "2",
         "--precision", "fp32", "--out", str(out / "search")])
    run(["eval", "--model", model, "--tasks", f"winogrande,ppl:{text}", "--limit", "7", "--batch-size", "2",
         "--window", "32", "--precision", "fp32", "--data-dir", tasks, "--json", str(out / "eval.json")])


if __name__ == "__main__":
    entry(Path(sys.argv[1]), Path(sys.argv[2]))
