"""Verbs ``importance``, ``prune`` and ``info``: the core of the pipeline."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

from ..arch import adapter_for
from ..config import ArchitectureArgs, EvalArgs, ImportanceSection, SearchArgs
from ..errors import CompactLMError
from ..evaluate import get_task
from ..export import save_student
from ..importance import ImportanceScores, check_criterion, estimate_importance
from ..io import check_output_dir
from ..models import parse_dtype, resolve_model
from ..parallel import barrier
from ..prune import PrunePlan, PruneTarget, apply_plan, check_depth_metric, make_plan
from ..prune.stream import probe_model, prune_checkpoint
from ..summary import describe, parameter_breakdown
from .common import add_data_args, add_model_args, add_output_args, add_trust_args, load_blocks_from_args, model_from_args
from .flags import OLD_AXIS_FLAGS, add_flags, from_flags
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

    p = sub.add_parser("prune", help="prune a model to a target architecture using saved scores",
                       description="Width (hidden, heads, KV groups, MLP) and depth pruning; writes a standard HF checkpoint.")
    add_model_args(p, dtype_default=None, dtype_note="; with --stream: as stored")
    p.add_argument("--scores", help="directory written by `compactlm importance`")
    p.add_argument("--plan", help="replay an existing prune_plan.json instead of planning from --scores")
    add_flags(p.add_argument_group("target architecture (an axis left out keeps the source size)"), ArchitectureArgs,
              aliases=OLD_AXIS_FLAGS)
    add_flags(p.add_argument_group("selection"), SearchArgs, only=("aggregation", "depth_metric"))
    stream = p.add_argument_group("streaming (a model bigger than RAM)")
    stream.add_argument("--stream", action="store_true",
                        help="prune a local safetensors checkpoint tensor by tensor, never loading the model: memory "
                             "stays near one output shard; keeps the stored dtype unless --dtype is given")
    stream.add_argument("--max-shard-size", help="with --stream: size of each output shard, e.g. 500MB "
                                                 "(default: 2GB)")
    add_output_args(p)
    p.set_defaults(func=run_prune)

    p = sub.add_parser("info", help="architecture and parameter breakdown of a model")
    p.add_argument("model", help="built-in name, checkpoint dir, .gguf file or Hugging Face id")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_trust_args(p)
    p.set_defaults(func=run_info)


def run_importance(args: argparse.Namespace) -> int:
    parallel = join_processes(args)   # torchrun: each process scores a share of the blocks
    check_output_dir(args.out, args.overwrite, inputs=[args.model, args.source])  # refuse before any heavy work
    options = from_flags(ImportanceSection, args, seed=args.seed)   # --seed: the data sample and the random criterion
    check_criterion(options.criterion)
    for name in options.depth_tasks:
        get_task(name)
    model, tokenizer = model_from_args(args)
    blocks = load_blocks_from_args(args, tokenizer, model=model)
    scores = estimate_importance(model, blocks.train, **options.estimate_kwargs(), tokenizer=tokenizer,
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


def run_prune(args: argparse.Namespace) -> int:
    check_output_dir(args.out, args.overwrite, inputs=[args.model, args.scores, args.plan])
    if bool(args.scores) == bool(args.plan):
        raise CompactLMError("Give exactly one of --scores (plan from importance) or --plan (replay a prune_plan.json).")
    target = PruneTarget(**vars(from_flags(ArchitectureArgs, args)))
    scores = ImportanceScores.load(args.scores) if args.scores else None
    plan = PrunePlan.load(args.plan) if args.plan else None
    if scores is not None:  # validate the target before loading the model

        where = f" (as recorded in the scores '{args.scores}', computed for '{scores.meta.get('model')}')"
        adapter_for(SimpleNamespace(model_type=scores.meta.get("model_type"))).check_target(
            target.resolve(scores.architecture, where))
        check_depth_metric(scores, args.depth_metric)
    if args.stream:
        return _prune_streaming(args, target, scores, plan)
    if args.max_shard_size is not None:
        raise CompactLMError("--max-shard-size sizes the shards of --stream; add --stream, or drop --max-shard-size.")
    args.dtype = args.dtype or "float32"
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


def _stream_source(name: str) -> str:
    """The checkpoint directory ``--stream`` reads; a GGUF file, built-in or hub id is refused with the way out."""

    source = resolve_model(name)
    if source.gguf_file:
        raise CompactLMError(f"--stream reads safetensors checkpoint directories, not GGUF ('{name}'). Prune it "
                             f"without --stream (it fits in memory once de-quantised), or convert it to a checkpoint "
                             f"directory first.")
    if not Path(source.path).is_dir():
        raise CompactLMError(f"--stream reads a local checkpoint directory; '{name}' is a Hugging Face id. Download "
                             f"it first (hf download {name} --local-dir DIR) and pass --model DIR, or drop --stream.")
    return source.path


def _prune_streaming(args: argparse.Namespace, target, scores, plan) -> int:
    """``prune --stream``: plan from the scores and the checkpoint's config alone, then prune shard by shard."""

    folder = _stream_source(args.model)
    if scores is not None:
        scores.check_matches(probe_model(folder))  # config + three probe tensors, not the model
        plan = make_plan(scores, target, aggregation=args.aggregation, depth_metric=args.depth_metric)
    result = prune_checkpoint(folder, plan, args.out, dtype=parse_dtype(args.dtype) if args.dtype else None,
                              max_shard_size=args.max_shard_size, overwrite=args.overwrite,
                              provenance={"source_model": args.model, "scores": args.scores, "plan": args.plan})
    before, after = result.source_parameters, result.student_parameters
    print(f"pruned {args.model} (streamed, {result.shards} shard{'s' if result.shards > 1 else ''}): "
          f"{before / 1e6:.1f}M -> {after / 1e6:.1f}M parameters ({after / before:.1%}) -> {args.out}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    info = describe(model_from_args(args, with_tokenizer=False))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    arch, params = info["architecture"], info["parameters"]
    print(f"{args.model}  ({info['model_type']})")
    width = max(22, *map(len, arch))
    for key, value in arch.items():
        print(f"  {key:<{width}} {value}")
    total = params["total"]
    print(f"  {'parameters':<{width}} {'count':>14} {'share':>7}")
    for key, value in params.items():
        print(f"  {key:<{width}} {value:>14,} {value / total:>7.1%}")
    if "active_parameters" in info:   # MoE: what one token touches (its top-k experts, everything else)
        active = info["active_parameters"]
        print(f"  {'active per token':<{width}} {active:>14,} {active / total:>7.1%}")
    return 0
