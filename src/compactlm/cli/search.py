"""Verb ``search``: the best architecture within a parameter budget, from saved importance scores."""

from __future__ import annotations

import argparse
import shutil

from ..config import AXES, SearchArgs, SearchSpaceArgs, TrainArgs
from ..deploy import check_budgets, tokenizer_source
from ..importance import ImportanceScores
from ..io import check_output_dir
from ..parallel import barrier
from ..search import search, table_text
from .common import add_data_args, add_model_args, load_blocks_from_args, model_from_args
from .flags import add_flags, flag, from_flags, section_flag
from .parallel import join_processes

# Flags of the search space before the Hugging Face names: deprecated aliases for one release.
OLD_SPACE_FLAGS = {"hidden_size": "--hidden-sizes", "intermediate_size": "--ffn-hidden-sizes",
                   "num_key_value_heads": "--num-kv-heads", "num_hidden_layers": "--num-layers"}
SEARCH_TRAIN = ("batch_size", "micro_batch_size", "precision")   # the short distillations' settings on this verb


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search the best architecture within a parameter budget",
                       description="Enumerate architectures within ±tolerance of the target, rank them by held-out LM "
                                   "loss after pruning, give the best --top-k the same short distillation, keep the best.")
    add_model_args(p)
    p.add_argument("--scores", required=True, help="directory written by `compactlm importance` for --model")
    add_data_args(p, samples=None, heldout=True)
    add_flags(p.add_argument_group("search space (default: derived from the model; comma-separated sizes)"),
              SearchSpaceArgs, aliases=OLD_SPACE_FLAGS)
    group = p.add_argument_group("search")
    add_flags(group, SearchArgs, skip=("space",))
    group.add_argument("--memory", type=section_flag, metavar="BUDGET",
                       help="deployed-memory budget: 300MB, or limit=2GB,weights=q4_0,seq_len=8192,batch=4 "
                            "(docs/search.md)")
    group.add_argument("--latency", type=section_flag, metavar="BUDGET",
                       help="speed budget measured on a runtime: runtime=llamacpp,weights=q4_0,decode_ms=10,prompt=128 "
                            "or runtime=hf,weights=float32,decode_tokens_per_s=40 (docs/search.md)")
    add_flags(p.add_argument_group("short distillations"), TrainArgs, only=SEARCH_TRAIN)
    p.add_argument("--out", required=True, help="directory for candidates.csv/json and the short distillations")
    p.add_argument("--resume", action="store_true", help="continue a search in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=run_search)


def run_search(args: argparse.Namespace) -> int:
    parallel = join_processes(args)   # torchrun: each process scores a share of the held-out blocks
    if not args.resume:
        check_output_dir(args.out, args.overwrite, inputs=[args.model, args.scores, args.source])
    space = from_flags(SearchSpaceArgs, args)
    settings = from_flags(SearchArgs, args, space=space if space.given() else None, memory=args.memory,
                          latency=args.latency)
    check_budgets(settings)   # a GGUF type, llama.cpp, the GPU: before anything is loaded
    train = from_flags(TrainArgs, args, only=SEARCH_TRAIN, device=args.device)
    scores = ImportanceScores.load(args.scores)
    model, tokenizer = model_from_args(args)
    blocks = load_blocks_from_args(args, tokenizer, heldout_samples=args.heldout_samples, model=model)
    barrier(parallel)     # every process has checked --out before rank 0 replaces it
    if not args.resume and parallel.is_main:   # every input loaded: only now is an old --out replaced
        shutil.rmtree(args.out, ignore_errors=True)
    result = search(model, scores, blocks.heldout, args.out, args=settings, train_blocks=blocks.train,
                    tokenizer=tokenizer, train_args=train, resume=args.resume, parallel=parallel,
                    tokenizer_source=tokenizer_source(args.model) if settings.latency else None)
    if not parallel.is_main:
        return 0
    print(table_text(result.rows, result.latency_metric))
    winner = result.winner
    print(f"\nselected {winner['name']} ({winner['params'] / 1e6:.2f}M parameters); prune it with:\n"
          f"  compactlm prune --model {args.model} --scores {args.scores} "
          + " ".join(f"{flag(a)} {winner[a]}" for a in AXES if a in winner)
          + f" --aggregation {settings.aggregation} --depth-metric {settings.depth_metric} --out student/")
    print(f"table: {result.out_dir / 'candidates.csv'}")
    return 0
