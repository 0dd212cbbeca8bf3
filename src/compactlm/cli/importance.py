"""``compactlm importance``: score heads, neurons, channels, experts and layers once; prune from the scores many times."""

from __future__ import annotations

import argparse

from ..config import EvalArgs, ImportanceSection
from ..evaluate import get_task
from ..importance import check_criterion, estimate_importance
from ..io import check_output_dir
from ..parallel import barrier
from .common import add_data_args, add_model_args, add_output_args, load_blocks_from_args, model_from_args
from .flags import add_flags, from_flags
from .parallel import join_processes

DEPTH_TASK_FIELDS = ("depth_tasks", "depth_task_examples", "depth_task_lengths")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("importance", help="score heads, neurons, channels and layers",
                       description="Calibration pass (forward-only unless --criterion taylor); saves scores reusable "
                                   "for any number of prunes.")
    add_model_args(p)
    add_data_args(p, with_samples=False)
    add_flags(p.add_argument_group("importance"), ImportanceSection, skip=("seed", *DEPTH_TASK_FIELDS),
              defaults={"samples": 256})
    depth = p.add_argument_group("task depth metric (prune --depth-metric task:NAME)")
    add_flags(depth, ImportanceSection, only=DEPTH_TASK_FIELDS)
    add_flags(depth, EvalArgs, only=("data_dir",))
    add_output_args(p)
    p.set_defaults(func=run_importance)


def run_importance(args: argparse.Namespace) -> int:
    parallel = join_processes(args)   # torchrun: each process scores a share of the blocks
    check_output_dir(args.out, args.overwrite, inputs=[args.model, args.source])  # refuse before any heavy work
    options = from_flags(ImportanceSection, args, seed=args.seed)   # --seed: the data sample and the random criterion
    check_criterion(options.criterion)
    for name in options.depth_tasks:
        get_task(name)
    model, tokenizer = model_from_args(args)
    blocks = load_blocks_from_args(args, tokenizer, model=model)
    scores = estimate_importance(model, blocks.train, options, tokenizer=tokenizer,
                                 data_dir=args.data_dir, meta={"data": blocks.describe()}, parallel=parallel)
    if parallel.is_main:
        scores.save(args.out, overwrite=args.overwrite)
        m = scores.meta
        print(f"importance: {m['tokens']:,} tokens in {m['seconds']:.1f} s ({m['tokens_per_second']:,.0f} tok/s) "
              f"-> {args.out}")
        if "experts.tokens" in scores.tensors:   # MoE: what to look at before choosing how many experts to keep
            print("routing (calibration tokens per expert):\n  " + "\n  ".join(scores.routing_lines()))
    barrier(parallel)
    return 0
