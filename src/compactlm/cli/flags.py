"""Command-line flags derived from the option classes of :mod:`compactlm.config` (litgpt style).

One field, one flag: ``batch_size`` becomes ``--batch-size``, its docstring the help, its type
the parser (token counts read ``400K``), its default the default. :func:`from_flags` builds the
option object back, so the CLI validates exactly as recipes and Python callers do.
Old spellings of renamed flags stay for one release as deprecated aliases.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Iterable

import yaml
from pydantic import ValidationError

from ..config import TokenCount, parse_tokens
from ..errors import CompactLMError
from ..readers import clip

# Deprecated spellings (before the Hugging Face names became the one vocabulary), removed in the next release.
OLD_AXIS_FLAGS = {"intermediate_size": "--ffn-hidden-size", "num_key_value_heads": "--num-kv-heads",
                  "num_hidden_layers": "--num-layers"}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _comma_list(kind: type):
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.replace(" ", "").split(",") if x]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got '{text}'") from None
    parse.__name__ = f"list of {kind.__name__}"
    return parse


def _tokens(text: str) -> int:
    try:
        return parse_tokens(text)
    except CompactLMError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _base(hint) -> tuple[object, list]:
    """The type under ``Annotated``/``| None`` and the Annotated metadata."""
    metadata = []
    while True:
        origin = typing.get_origin(hint)
        if origin is typing.Annotated:
            hint, *extra = typing.get_args(hint)
            metadata += extra
        elif origin in (typing.Union, types.UnionType):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        else:
            return hint, metadata


def _argument(info, default) -> dict:
    """argparse keyword arguments for one pydantic field."""
    hint, metadata = _base(info.annotation)
    metadata = [*metadata, *info.metadata]   # pydantic keeps a field's own Annotated metadata here
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction if default else "store_true"}
    if typing.get_origin(hint) is typing.Literal:
        return {"choices": list(typing.get_args(hint))}
    if typing.get_origin(hint) is list:
        item, _ = _base(typing.get_args(hint)[0])
        return {"type": _comma_list(item)}
    if any(isinstance(m, TokenCount) for m in metadata):
        return {"type": _tokens}
    return {"type": hint if hint in (int, float) else str}


class _Deprecated(argparse.Action):
    """An old flag spelling: works, and says once on stderr which flag replaces it."""

    def __init__(self, *args, new: str, **kwargs) -> None:
        self.new = new
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"compactlm: {option_string} is deprecated; use {self.new} (the Hugging Face config name). "
              f"The old spelling will be removed in the next release.", file=sys.stderr)
        setattr(namespace, self.dest, values)


def section_flag(text: str) -> str | dict:
    """``limit=2GB,seq_len=8192,batch=4`` → a mapping (values read as YAML scalars: 8192 is an int, q4_0 text); text
    without ``=`` (``300MB``) is returned as is, for a section with a shorthand."""
    if "=" not in text:
        return text
    values = {}
    for item in (i for i in text.split(",") if i.strip()):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE pairs separated by commas, got '{clip(item, 40)}'")
        values[key.strip()] = yaml.safe_load(value.strip())
    return values


def add_flags(parser, cls: type, *, only: Iterable[str] | None = None, skip: Iterable[str] = (),
              defaults: dict | None = None, names: dict[str, str] | None = None,
              aliases: dict[str, str] | None = None) -> None:
    """One flag per field of the option class ``cls`` on ``parser`` (a parser or an argument group).

    ``only``/``skip`` choose fields; ``defaults`` overrides a field's default for this verb;
    ``names`` gives a field another flag (``source`` → ``--data``); ``aliases`` adds a deprecated
    old spelling. Nested sections are skipped (their fields get their own call).
    """
    fields = cls.__pydantic_fields__
    chosen = [f for f in dataclasses.fields(cls) if (only is None or f.name in only) and f.name not in skip]
    defaults, names, aliases = defaults or {}, names or {}, aliases or {}
    for f in chosen:
        info = fields[f.name]
        base = _base(info.annotation)[0]
        if isinstance(base, type) and dataclasses.is_dataclass(base):   # a nested section: its own add_flags call
            continue
        default = defaults.get(f.name, info.get_default(call_default_factory=True))
        kwargs = _argument(info, default)
        text = (info.description or "").replace("%", "%%").replace("\n", " ")
        text = " ".join(text.split())
        if kwargs.get("action") != "store_true":
            text += " (default: %(default)s)"
        main = names.get(f.name, flag(f.name))
        if "type" in kwargs:
            kwargs["metavar"] = main[2:].upper().replace("-", "_")
        parser.add_argument(main, dest=f.name, default=default, help=text, **kwargs)
        if f.name in aliases:
            parser.add_argument(aliases[f.name], dest=f.name, action=_Deprecated, new=main, default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS, **{k: v for k, v in kwargs.items() if k != "action"})


def from_flags(cls: type, args: argparse.Namespace, names: dict[str, str] | None = None,
               only: Iterable[str] | None = None, **fixed):
    """The option object of ``cls`` from parsed flags (fields without a flag keep their default; ``fixed`` wins).

    ``only`` limits the fields read to those this verb gave ``cls`` flags for (as in :func:`add_flags`).
    """
    names = names or {}
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if hasattr(args, f.name) and (only is None or f.name in only)}
    values.update(fixed)
    try:
        return cls(**values)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            name = next((str(p) for p in e["loc"] if isinstance(p, str) and p in values), None)
            spelled = names.get(name, flag(name)) if name else "options"
            expected = e["msg"].replace("Input should be", "expected").replace("Value error, ", "")
            problems.append(f"{spelled} {clip(repr(e.get('input')), 60)}: {expected}")
        raise CompactLMError("; ".join(problems) + ".") from None
