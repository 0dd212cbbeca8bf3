"""The ``compactlm`` command line: verbs in pipeline order, each a thin layer over the API.

Each verb lives in a small module that exposes ``register(subparsers)``; the parser it adds
sets ``func(args) -> int``. User mistakes (:class:`CompactLMError`) become one line on stderr
and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import CompactLMError

# Pipeline order; a module missing here simply contributes no verb.
VERB_MODULES = ("core", "distill", "search", "eval", "run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compactlm",
        description="Prune a Hugging Face decoder LM by activation importance and retrain it by distillation (Minitron).",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name == f"{__name__}.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(force=True, stream=sys.stderr,
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args.debug else "%(message)s",
    )
    if args.quiet:
        import os

        from transformers.utils import logging as hf_logging

        os.environ["COMPACTLM_NO_PROGRESS"] = "1"
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CompactLMError as err:
        if args.debug:
            raise
        print(f"compactlm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"compactlm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
