"""Verb ``search``: the best architecture within a parameter budget, from saved importance scores."""

from __future__ import annotations

import argparse

from .common import add_data_args, add_model_args


def _sizes(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def register(sub: argparse._SubParsersAction) -> None:
    from ..distill.config import parse_tokens

    p = sub.add_parser("search", help="search the best architecture within a parameter budget",
                       description="Enumerate architectures within ±tolerance of the target, rank them by held-out LM "
                                   "loss after pruning, give the best --top-k the same short distillation, keep the best.")
    add_model_args(p)
    p.add_argument("--scores", required=True, help="directory written by `compactlm importance` for --model")
    p.add_argument("--target-params", required=True, help="a count (90M, 1.5B) or a fraction of the model (0.667)")
    p.add_argument("--tolerance", type=float, default=0.05, help="candidates within target x (1 ± tolerance) (default: %(default)s)")
    add_data_args(p, samples=None)
    p.add_argument("--heldout-samples", type=int, default=16, help="held-out blocks for the proxy and validation (default: %(default)s)")
    space = p.add_argument_group("search space (default: derived from the model)")
    for axis, flag in (("hidden_size", "--hidden-sizes"), ("intermediate_size", "--ffn-hidden-sizes"),
                       ("num_attention_heads", "--num-attention-heads"), ("num_key_value_heads", "--num-kv-heads"),
                       ("num_hidden_layers", "--num-layers")):
        space.add_argument(flag, dest=axis, type=_sizes, help=f"comma-separated {axis} values to try")
    space.add_argument("--max-depth-cut", type=float, default=0.2, help="derived space: remove at most this fraction of layers (default: %(default)s)")
    space.add_argument("--prune-kv-heads", action="store_true", help="derived space: also try fewer KV groups")
    space.add_argument("--max-candidates", type=int, default=24, help="keep the N candidates nearest the target (default: %(default)s)")
    rank = p.add_argument_group("ranking")
    rank.add_argument("--top-k", type=int, default=3, help="candidates that get the short distillation; 0 = best proxy wins (default: %(default)s)")
    rank.add_argument("--distill-tokens", type=parse_tokens, default=65536, help="tokens of each short distillation (default: %(default)s)")
    rank.add_argument("--batch-size", type=int, default=8, help="distillation batch in sequences (default: %(default)s)")
    rank.add_argument("--micro-batch-size", type=int, default=4, help="sequences per forward/backward (default: %(default)s)")
    rank.add_argument("--precision", default="auto",
                      help="auto | bf16 | fp32 for the proxy and the short distillations; auto: bf16 where the device "
                           "runs it natively and it is measured faster (default: %(default)s)")
    rank.add_argument("--aggregation", default="l2,mean", help="batch,seq aggregation of the scores (default: %(default)s)")
    rank.add_argument("--depth-metric", default="bi", help="bi | loss | block (default: %(default)s)")
    p.add_argument("--out", required=True, help="directory for candidates.csv/json and the short distillations")
    p.add_argument("--resume", action="store_true", help="continue a search in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=run_search)


def run_search(args: argparse.Namespace) -> int:
    import shutil

    from ..distill import TrainArgs
    from ..importance import ImportanceScores
    from ..io import check_output_dir
    from ..search import AXES, SearchArgs, search, table_text
    from ..errors import CompactLMError
    from .common import load_blocks_from_args, model_from_args

    if not args.resume:
        check_output_dir(args.out, args.overwrite, inputs=[args.model, args.scores, args.data])
    if not 0 <= args.tolerance < 1 or not 0 <= args.max_depth_cut < 1 or args.max_candidates < 1:
        raise CompactLMError(f"--tolerance and --max-depth-cut must be in [0, 1) and --max-candidates >= 1 "
                             f"(got {args.tolerance}, {args.max_depth_cut}, {args.max_candidates}).")
    space = {a: getattr(args, a) for a in AXES if getattr(args, a)}
    settings = SearchArgs(target_params=args.target_params, tolerance=args.tolerance, space=space or None,
                          max_depth_cut=args.max_depth_cut, prune_kv_heads=args.prune_kv_heads,
                          max_candidates=args.max_candidates, top_k=args.top_k, distill_tokens=args.distill_tokens,
                          aggregation=args.aggregation, depth_metric=args.depth_metric)
    scores = ImportanceScores.load(args.scores)
    model, tokenizer = model_from_args(args)
    blocks = load_blocks_from_args(args, tokenizer, heldout_samples=args.heldout_samples, model=model)
    if not args.resume:   # every input loaded: only now is an old --out replaced
        shutil.rmtree(args.out, ignore_errors=True)
    train = TrainArgs(batch_size=args.batch_size, micro_batch_size=args.micro_batch_size, precision=args.precision,
                      device=args.device)
    result = search(model, scores, blocks.heldout, args.out, args=settings, train_blocks=blocks.train,
                    tokenizer=tokenizer, train_args=train, resume=args.resume)
    print(table_text(result.rows))
    winner = result.winner
    print(f"\nselected {winner['name']} ({winner['params'] / 1e6:.2f}M parameters); prune it with:\n"
          f"  compactlm prune --model {args.model} --scores {args.scores} "
          + " ".join(f"--{flag} {winner[a]}" for a, flag in zip(AXES, ("hidden-size", "ffn-hidden-size",
                                                                        "num-attention-heads", "num-kv-heads",
                                                                        "num-layers")))
          + f" --aggregation {args.aggregation} --depth-metric {args.depth_metric} --out student/")
    print(f"table: {result.out_dir / 'candidates.csv'}")
    return 0
