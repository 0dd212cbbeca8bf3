"""Verb ``export``: a student (any loadable model) as a GGUF file for llama.cpp, Ollama, LM Studio."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CompactLMError
from ..export.gguf import check_gguf_output, check_quant, export_gguf, quant_types
from ..export.gguf_vocab import find_gguf_source
from ..models import load_model, resolve_model
from .common import add_trust_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a model as a (quantized) GGUF file that llama.cpp runs",
                       description="GGUF export with the gguf package: llama.cpp metadata and tensor layout, the "
                                   "tokenizer copied from the GGUF the model descends from (or converted from "
                                   "tokenizer.json), weights in the chosen type.")
    p.add_argument("model", help="checkpoint dir (a compactlm student), built-in name, .gguf file or Hugging Face id")
    p.add_argument("--gguf", required=True, metavar="OUT.gguf", help="output file (written atomically)")
    p.add_argument("--quant", default="q8_0",
                   help=f"weight type: {' | '.join(quant_types())} (default: %(default)s; norms and biases stay f32)")
    p.add_argument("--tokenizer-from", metavar="FILE.gguf",
                   help="copy the tokenizer from this GGUF file (default: the GGUF the model descends from, "
                        "found through compactlm_provenance.json; else tokenizer.json is converted)")
    p.add_argument("--tokenizer-pre", metavar="NAME",
                   help="llama.cpp pre-tokenizer name for a converted byte-level BPE tokenizer (e.g. llama-bpe, qwen2)")
    p.add_argument("--name", help="general.name in the file (default: the model's name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_trust_args(p)
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    quant = check_quant(args.quant)
    out = Path(args.gguf)
    source = resolve_model(args.model)
    inputs = [Path(source.path) / source.gguf_file if source.gguf_file else source.path]   # a file, a dir or a hub id
    if args.tokenizer_from:
        tok_source = resolve_model(args.tokenizer_from)
        if not tok_source.gguf_file:
            raise CompactLMError(f"--tokenizer-from '{args.tokenizer_from}' is not a .gguf file (or built-in); give "
                                 f"the GGUF file whose tokenizer the model uses.")
        gguf_source = Path(tok_source.path) / tok_source.gguf_file
    else:
        gguf_source = find_gguf_source(args.model)
    inputs.append(gguf_source)
    check_gguf_output(out, args.overwrite, quant, inputs=inputs)   # before the model is loaded
    model = load_model(args.model, dtype="float32", trust_remote_code=args.trust_remote_code,
                       allow_pickle=args.allow_pickle, with_tokenizer=False)
    hf_dir = Path(source.path) if Path(source.path).is_dir() else None
    result = export_gguf(model, out, quant=quant, name=args.name, gguf_source=gguf_source, hf_dir=hf_dir,
                         tokenizer_pre=args.tokenizer_pre, overwrite=args.overwrite)
    note = f"; {len(result.f16_fallback)} tensor(s) in f16" if result.f16_fallback else ""
    print(f"exported {args.model} -> {result.path} ({result.quant}, {result.bytes / 1e6:.1f} MB, llama.cpp arch "
          f"'{result.arch}', tokenizer {result.tokenizer}{note})")
    return 0
