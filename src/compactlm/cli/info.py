"""``compactlm info``: the architecture and parameter breakdown of a model."""

from __future__ import annotations

import argparse
import json

from ..builtins import BUILTIN_MODELS
from ..summary import describe
from .common import add_trust_args, model_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="architecture and parameter breakdown of a model")
    p.add_argument("model", help="built-in name, checkpoint dir, .gguf file or Hugging Face id")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_trust_args(p)
    p.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> int:
    info = describe(model_from_args(args, with_tokenizer=False))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    arch, params = info["architecture"], info["parameters"]
    print(f"{args.model}  ({info['model_type']})")
    if args.model in BUILTIN_MODELS:
        print(f"  {BUILTIN_MODELS[args.model].about}")
    width = max(22, *map(len, arch))
    for key, value in arch.items():
        print(f"  {key:<{width}} {value}")
    for kind, layers in info.get("layer_types", {}).items():   # only where layers differ (sliding / global)
        print(f"  {kind:<{width}} {len(layers)} layers: {', '.join(map(str, layers))}")
    total = params["total"]
    print(f"  {'parameters':<{width}} {'count':>14} {'share':>7}")
    for key, value in params.items():
        print(f"  {key:<{width}} {value:>14,} {value / total:>7.1%}")
    if "active_parameters" in info:   # MoE: what one token touches (its top-k experts, everything else)
        active = info["active_parameters"]
        print(f"  {'active per token':<{width}} {active:>14,} {active / total:>7.1%}")
    return 0
