"""``compactlm prune``: a target architecture from saved scores (or a replayed plan) to a standard checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import ArchitectureArgs, SearchArgs
from ..errors import CompactLMError
from ..export import save_student
from ..importance import ImportanceScores
from ..io import check_output_dir
from ..models import parse_dtype, resolve_model
from ..prune import PrunePlan, PruneTarget, apply_plan, check_depth_metric, make_plan
from ..prune.stream import probe_model, prune_checkpoint
from ..summary import parameter_breakdown
from .common import add_model_args, add_output_args, model_from_args
from .flags import OLD_AXIS_FLAGS, add_flags, from_flags


def register(sub: argparse._SubParsersAction) -> None:
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


def run_prune(args: argparse.Namespace) -> int:
    check_output_dir(args.out, args.overwrite, inputs=[args.model, args.scores, args.plan])
    if bool(args.scores) == bool(args.plan):
        raise CompactLMError("Give exactly one of --scores (plan from importance) or --plan (replay a prune_plan.json).")
    target = PruneTarget(**vars(from_flags(ArchitectureArgs, args)))
    scores = ImportanceScores.load(args.scores) if args.scores else None
    plan = PrunePlan.load(args.plan) if args.plan else None
    if scores is not None:  # validate the target before loading the model
        where = f" (as recorded in the scores '{args.scores}', computed for '{scores.meta.get('model')}')"
        target.check(scores.architecture, scores.meta.get("model_type"), where)
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
