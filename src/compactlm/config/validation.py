"""Validation of a mapping into an option class, with one error that names every bad key path and value."""

from __future__ import annotations

import dataclasses
import re
import typing

from pydantic import TypeAdapter, ValidationError

from ..errors import CompactLMError, unknown_name
from ..readers import clip

_EXPECTED = {"int_type": "expected an integer", "int_parsing": "expected an integer",
             "int_from_float": "expected an integer", "float_type": "expected a float (e.g. 3e-4)",
             "float_parsing": "expected a float (e.g. 3e-4)", "bool_type": "expected true or false",
             "string_type": "expected text", "list_type": "expected a list",
             "dataclass_type": "expected a mapping", "dataclass_args_type": "expected a mapping",
             "unexpected_keyword_argument": "unknown key"}


def key_path(loc: tuple, prefix: str = "") -> str:
    """``('steps', 0, 'distill', 'tokens')`` → ``steps[0].distill.tokens``."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not (isinstance(part, str) and (part[:1].isupper() or part.startswith(("function-", "literal[")))):
            path += f".{part}" if path else str(part)   # skips pydantic's union/validator labels
    return path or "top level"


def _message(error: dict, prefix: str, fields: dict[str, tuple[str, ...]]) -> str:
    where = key_path(error["loc"], prefix)
    kind = error["type"]
    if kind == "unexpected_keyword_argument":
        parent, name = where.rpartition(".")[0], str(error["loc"][-1])
        known = fields.get(re.sub(r"\[\d+\]", "", parent), ())
        return f"'{clip(where, 80)}': " + str(unknown_name("key", clip(name, 80), known)).rstrip(".")
    expected = _EXPECTED.get(kind) or error["msg"].replace("Input should be", "expected").replace("Value error, ", "")
    expected = expected.rstrip(".")
    if kind == "value_error":
        return f"'{where}': {expected}"
    return f"'{where}': {expected}, got {clip(repr(error.get('input')), 80)}"


def _known_fields(cls: type, prefix: str = "", out: dict | None = None) -> dict[str, tuple[str, ...]]:
    """Field names of ``cls`` and of every section inside it, by key path without indices."""
    out = {} if out is None else out
    out[prefix] = tuple(f.name for f in dataclasses.fields(cls))
    for f in dataclasses.fields(cls):
        inner = getattr(cls, "__pydantic_fields__")[f.name].annotation
        for candidate in _section_types(inner):
            _known_fields(candidate, f"{prefix}.{f.name}" if prefix else f.name, out)
    return out


def _section_types(hint) -> list[type]:
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return [hint]
    return [t for a in typing.get_args(hint) for t in _section_types(a)]


def validate(cls: type, values: dict | None, what: str = "recipe key", prefix: str = ""):
    """An instance of the option class ``cls`` from a mapping; every problem names its key path and value."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise CompactLMError(f"{what} '{prefix or 'top level'}': expected a mapping, got {clip(values)}.")
    try:
        return TypeAdapter(cls).validate_python(values)
    except ValidationError as err:
        fields = _known_fields(cls)
        problems = [_message(e, prefix, fields) for e in err.errors()]
        raise CompactLMError(f"{what} " + f"; {what} ".join(problems) + ".") from None
