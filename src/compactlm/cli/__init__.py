"""The ``compactlm`` command line: verbs in pipeline order, each a thin layer over the API.

Each verb lives in a small module that exposes ``register(subparsers)``; the parser it adds
sets ``func(args) -> int``. User mistakes (:class:`CompactLMError`) become one line on stderr
and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading

from transformers.utils import logging as hf_logging

from ..errors import CompactLMError, Terminated, interrupt_exit_code
from .tcmalloc import reexec_under_tcmalloc

# Pipeline order; a module missing here simply contributes no verb.
VERB_MODULES = ("plan", "importance", "prune", "info", "distill", "search", "eval", "export", "run")


class _Parser(argparse.ArgumentParser):
    """argparse with compactlm's error shape: one line, exit status 2; a bad value names the flag."""

    def _get_value(self, action, arg_string):  # noqa: ANN001 - argparse's signature
        try:
            return super()._get_value(action, arg_string)
        except CompactLMError as err:   # a type= parser of ours (parse_tokens) refusing the value
            raise argparse.ArgumentError(action, str(err)) from None

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _terminate(signum, _frame) -> None:
    raise Terminated(signum)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:   # --help (0) or a usage error (2, one line already printed)
        return int(stop.code or 0)
    logging.basicConfig(force=True, stream=sys.stderr,
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if args.debug else "%(message)s",
    )
    if args.quiet:
        os.environ["COMPACTLM_NO_PROGRESS"] = "1"
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM unwinds like Ctrl-C, so atomic writers remove their temp dirs; the exit status is 143.
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return int(args.func(args) or 0)
    except CompactLMError as err:
        if args.debug:
            raise
        print(f"compactlm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"compactlm {args.command}: {'terminated' if isinstance(err, Terminated) else 'interrupted'}",
              file=sys.stderr)
        return interrupt_exit_code(err)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def entry() -> None:
    """The ``compactlm`` console command (and ``python -m compactlm``): under tcmalloc where the machine has it."""
    reexec_under_tcmalloc(sys.argv[1:])
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:   # `compactlm info M | head`: the reader left; say nothing more (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141            # as a shell reports a process ended by SIGPIPE
    sys.exit(code)
