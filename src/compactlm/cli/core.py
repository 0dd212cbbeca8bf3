"""Verbs ``importance``, ``prune`` and ``info``: the core of the pipeline."""

from __future__ import annotations

import argparse
import json

from ..config import ArchitectureArgs, SearchArgs
from .common import (add_data_args, add_model_args, add_output_args, add_trust_args, load_blocks_from_args,
                     model_from_args)
from .flags import OLD_AXIS_FLAGS, add_flags, from_flags


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("importance", help="score heads, neurons, channels and layers",
                       description="Calibration pass (forward-only unless --criterion taylor); saves scores reusable "
                                   "for any number of prunes.")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default: %(default)s)")
    p.add_argument("--layer-loss-samples", type=int, default=8,
                   help="sequences for the 'LM loss with layer i removed' metric; 0 skips it (default: %(default)s)")
    p.add_argument("--seq-aggregations", default="mean",
                   help="sequence aggregations to record: mean serves every BATCH,mean choice at prune time; "
                        "mean,l2,var serves all nine (default: %(default)s)")
    p.add_argument("--criterion", default="activation",
                   help="width importance: activation (hook statistics), magnitude (L2 norm of each unit's weights), "
                        "taylor (first-order |w * dL/dw| per unit, one backward pass over the data) or random "
                        "(seeded by --seed); layer metrics are recorded either way (default: %(default)s)")
    depth = p.add_argument_group("task depth metric (prune --depth-metric task:NAME)")
    depth.add_argument("--depth-tasks", default="",
                       help="zero-shot tasks scored with every contiguous block of layers removed, e.g. winogrande")
    depth.add_argument("--depth-task-examples", type=int, default=64,
                       help="examples per task and block, the seeded subset of `compactlm eval --limit N` (default: %(default)s)")
    depth.add_argument("--depth-task-lengths", default=None,
                       help="block lengths to score, e.g. 8,16 (default: every length 1..L-1, L(L+1)/2 - 1 evaluations)")
    depth.add_argument("--data-dir", default=None, help="folder with local task files (default: $COMPACTLM_DATA_DIR)")
    add_output_args(p)
    p.set_defaults(func=run_importance)

    p = sub.add_parser("prune", help="prune a model to a target architecture using saved scores",
                       description="Width (hidden, heads, KV groups, MLP) and depth pruning; writes a standard HF checkpoint.")
    add_model_args(p)
    p.add_argument("--scores", help="directory written by `compactlm importance`")
    p.add_argument("--plan", help="replay an existing prune_plan.json instead of planning from --scores")
    add_flags(p.add_argument_group("target architecture (an axis left out keeps the source size)"), ArchitectureArgs,
              aliases=OLD_AXIS_FLAGS)
    add_flags(p.add_argument_group("selection"), SearchArgs, only=("aggregation", "depth_metric"))
    add_output_args(p)
    p.set_defaults(func=run_prune)

    p = sub.add_parser("info", help="architecture and parameter breakdown of a model")
    p.add_argument("model", help="built-in name, checkpoint dir, .gguf file or Hugging Face id")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_trust_args(p)
    p.set_defaults(func=run_info)


def run_importance(args: argparse.Namespace) -> int:
    from ..errors import CompactLMError
    from ..evaluate import get_task
    from ..importance import check_criterion, estimate_importance
    from ..io import check_output_dir

    check_output_dir(args.out, args.overwrite, inputs=[args.model, args.source])  # refuse before any heavy work
    if args.batch_size <= 0 or args.layer_loss_samples < 0 or args.samples <= 0 or args.seq_len < 2:
        raise CompactLMError(f"--batch-size and --samples must be > 0, --seq-len >= 2 and --layer-loss-samples >= 0 "
                             f"(got {args.batch_size}, {args.samples}, {args.seq_len}, {args.layer_loss_samples}).")
    check_criterion(args.criterion)
    tasks = [t for t in args.depth_tasks.split(",") if t]
    for name in tasks:
        get_task(name)
    if args.depth_task_examples <= 0:
        raise CompactLMError(f"--depth-task-examples must be > 0 (got {args.depth_task_examples}).")
    try:
        lengths = None if args.depth_task_lengths is None else [int(n) for n in args.depth_task_lengths.split(",")]
    except ValueError:
        raise CompactLMError(f"--depth-task-lengths takes comma-separated integers, e.g. 8,16 "
                             f"(got '{args.depth_task_lengths}').") from None
    model, tokenizer = model_from_args(args)
    blocks = load_blocks_from_args(args, tokenizer, model=model)
    scores = estimate_importance(model, blocks.train, criterion=args.criterion, seed=args.seed, batch_size=args.batch_size,
                                 layer_loss_samples=args.layer_loss_samples, seq_aggregations=args.seq_aggregations,
                                 depth_tasks=tasks, depth_task_examples=args.depth_task_examples,
                                 depth_task_lengths=lengths, tokenizer=tokenizer, data_dir=args.data_dir,
                                 meta={"data": blocks.describe()})
    scores.save(args.out, overwrite=args.overwrite)
    m = scores.meta
    print(f"importance: {m['tokens']:,} tokens in {m['seconds']:.1f} s ({m['tokens_per_second']:,.0f} tok/s) -> {args.out}")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from ..errors import CompactLMError
    from ..export import save_student
    from ..importance import ImportanceScores
    from ..io import check_output_dir
    from ..prune import PrunePlan, PruneTarget, apply_plan, check_depth_metric, make_plan
    from ..summary import parameter_breakdown

    check_output_dir(args.out, args.overwrite, inputs=[args.model, args.scores, args.plan])
    if bool(args.scores) == bool(args.plan):
        raise CompactLMError("Give exactly one of --scores (plan from importance) or --plan (replay a prune_plan.json).")
    target = PruneTarget(**vars(from_flags(ArchitectureArgs, args)))
    scores = ImportanceScores.load(args.scores) if args.scores else None
    plan = PrunePlan.load(args.plan) if args.plan else None
    if scores is not None:  # validate the target before loading the model
        from types import SimpleNamespace

        from ..arch import adapter_for

        where = f" (as recorded in the scores '{args.scores}', computed for '{scores.meta.get('model')}')"
        adapter_for(SimpleNamespace(model_type=scores.meta.get("model_type"))).check_target(
            target.resolve(scores.architecture, where))
        check_depth_metric(scores, args.depth_metric)
    model, tokenizer = model_from_args(args)
    if scores is not None:
        scores.check_matches(model)
        plan = make_plan(scores, target, aggregation=args.aggregation, depth_metric=args.depth_metric)
    student = apply_plan(model, plan)
    before, after = parameter_breakdown(model)["total"], parameter_breakdown(student)["total"]
    save_student(student, tokenizer, args.out, plan=plan, overwrite=args.overwrite,
                 provenance={"source_model": args.model, "scores": args.scores, "plan": args.plan,
                             "parameters": {"source": before, "student": after}})
    print(f"pruned {args.model}: {before / 1e6:.1f}M -> {after / 1e6:.1f}M parameters ({after / before:.1%}) -> {args.out}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from ..summary import describe

    info = describe(model_from_args(args, with_tokenizer=False))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    arch, params = info["architecture"], info["parameters"]
    print(f"{args.model}  ({info['model_type']})")
    for key, value in arch.items():
        print(f"  {key:<22} {value}")
    total = params["total"]
    print(f"  {'parameters':<22} {'count':>14} {'share':>7}")
    for key, value in params.items():
        print(f"  {key:<22} {value:>14,} {value / total:>7.1%}")
    return 0
