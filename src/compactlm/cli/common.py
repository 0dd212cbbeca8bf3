"""Argument groups shared by several verbs (model, data, output)."""

from __future__ import annotations

import argparse

from ..config import DEFAULT_MODEL, DataSection
from ..data import load_blocks
from ..distill.checks import check_blocks_fit, position_problems
from ..errors import CompactLMError
from ..models import load_model
from .flags import add_flags, from_flags

# The data section's fields under the flag names the verbs have always used (--config alone would be ambiguous).
DATA_FLAGS = {"source": "--data", "config": "--data-config", "split": "--data-split"}


def add_model_args(parser: argparse.ArgumentParser, flag: str = "--model", default: str | None = DEFAULT_MODEL,
                   dtype_default: str | None = "float32", dtype_note: str = "") -> None:
    group = parser.add_argument_group("model")
    group.add_argument(flag, default=default, required=default is None,
                       help=f"built-in name ({DEFAULT_MODEL}), local checkpoint dir, .gguf file or Hugging Face id "
                            "(default: %(default)s)")
    group.add_argument("--dtype", default=dtype_default,
                       help=f"float32 | bfloat16 | float16 (default: {dtype_default or 'float32'}{dtype_note})")
    group.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: %(default)s)")
    add_trust_args(group)


def add_trust_args(group) -> None:
    """The two switches that let a checkpoint do more than hold tensors; both off by default."""
    group.add_argument("--trust-remote-code", action="store_true",
                       help="run the checkpoint's own Python code (auto_map); only for checkpoints you trust")
    group.add_argument("--allow-pickle", action="store_true",
                       help="load pickle-only (pytorch_model.bin) weights, with torch.load(weights_only=True)")


def model_from_args(args: argparse.Namespace, name: str | None = None, **kwargs):
    """``load_model`` with the model options of :func:`add_model_args` (``--dtype``, ``--device``, trust switches)."""

    options = {"dtype": getattr(args, "dtype", "float32"), "device": getattr(args, "device", "cpu"), **kwargs}
    return load_model(name or args.model, trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle,
                      **options)


def add_data_args(parser: argparse.ArgumentParser, samples: int | None = 256, heldout: bool = False,
                  with_samples: bool = True) -> None:
    """The data flags of a recipe's ``data`` section (``--data``, ``--seq-len``, ...), plus ``--samples``."""
    group = parser.add_argument_group("data")
    add_flags(group, DataSection, skip=() if heldout else ("heldout_samples",), names=DATA_FLAGS)
    if with_samples:
        group.add_argument("--samples", type=int, default=samples, help="number of sequences (default: %(default)s)")


def add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory (written atomically)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


def load_blocks_from_args(args: argparse.Namespace, tokenizer, *, heldout_samples: int = 0, model=None):
    """The token blocks of the data options; with ``model``, refused when they do not fit it (positions, vocabulary)."""

    if model is not None:
        refuse_misfit(position_problems(args.seq_len, model.config))   # before reading any text
    data = from_flags(DataSection, args, names=DATA_FLAGS)
    blocks = load_blocks(data.source, tokenizer, seq_len=data.seq_len, num_samples=args.samples,
                         heldout_samples=heldout_samples, seed=data.seed, text_field=data.text_field,
                         dataset_config=data.config, split=data.split)
    if model is not None:
        refuse_misfit(check_blocks_fit(blocks.train, model.config))
    return blocks


def refuse_misfit(problems: list[str]) -> None:
    if problems:
        raise CompactLMError("The data does not fit the model: " + "; ".join(problems) + ".")
