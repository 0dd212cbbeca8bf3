"""The file boundary: every file compactlm reads goes through here, and what goes wrong becomes one clear error.

A truncated safetensors file, a GGUF of random bytes, a JSON file cut in half or a YAML recipe
built to explode all raise deep inside other libraries (``SafetensorError``, ``struct.error``,
``JSONDecodeError``, ``MemoryError`` ...). :func:`reading` turns any of them into one
:class:`CompactLMError` that names the file. YAML is read with aliases refused (a 1 KB
"billion laughs" file would otherwise expand to gigabytes), and values quoted in messages are cut
by :func:`clip`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from safetensors.torch import load_file

from .errors import CompactLMError

MAX_YAML_BYTES = 1 << 20   # a recipe is a few KB; anything near 1 MB is not one


def printable(text: str) -> str:
    """``text`` with every character that would not show as itself escaped as in a Python literal: controls
    (``\\x00``, ``\\n``), bidirectional overrides (``\\u202e``) and other format characters. A message quoting
    a value then shows what was given, and cannot be cut, hidden or reordered on the terminal by it."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def clip(value: Any, limit: int = 120) -> str:
    """``repr(value)`` (a string as :func:`printable` text) cut to ``limit`` characters, so that no error line
    carries a whole file or a raw control character."""
    text = printable(value) if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def describe_error(err: BaseException) -> str:
    """``Type: first line of the message``, cut."""
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {clip(first, 200)}" if first else type(err).__name__


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str, fix: str = "") -> Iterator[None]:
    """Run a read of ``path``; any failure becomes ``CompactLMError`` naming the file, ``what`` it should be and the fix.

    Our own errors pass through unchanged; KeyboardInterrupt and SystemExit are not caught.
    """
    try:
        yield
    except CompactLMError:
        raise
    except Exception as err:  # noqa: BLE001 - the file boundary: any library's failure on a bad file
        hint = f" {fix}" if fix else ""
        raise CompactLMError(f"Cannot read {what} '{path}' ({describe_error(err)}): the file is damaged or not a "
                             f"{what}.{hint}") from err


def read_json(path: str | os.PathLike, what: str = "JSON file", fix: str = "") -> Any:
    """A JSON file, with any failure (missing, not UTF-8, not JSON) named."""
    path = Path(path)
    if not path.is_file():
        raise CompactLMError(f"{what[0].upper() + what[1:]} '{path}' does not exist.{(' ' + fix) if fix else ''}")
    with reading(path, what, fix):
        return json.loads(path.read_text(encoding="utf-8"))


def read_json_object(path: str | os.PathLike, what: str = "JSON file", fix: str = "") -> dict:
    """Like :func:`read_json`, but the top level must be an object."""
    data = read_json(path, what, fix)
    if not isinstance(data, dict):
        raise CompactLMError(f"{what[0].upper() + what[1:]} '{path}' holds a JSON {type(data).__name__}; expected an "
                             f"object.{(' ' + fix) if fix else ''}")
    return data


def load_safetensors(path: str | os.PathLike, what: str = "safetensors file", fix: str = "") -> dict:
    """All tensors of a safetensors file (never a pickle), with any failure named."""

    with reading(path, what, fix):
        return load_file(str(path))


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.safe_load`` without anchors/aliases: a recipe never needs them, a YAML bomb always does."""

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise CompactLMError(f"YAML alias '*{clip(event.anchor, 40)}' at line {event.start_mark.line + 1}: "
                                 f"compactlm does not expand YAML aliases (&anchor / *alias). Write the value out.")
        return super().compose_node(parent, index)


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML ``text`` (from ``where``: a file name or ``--set KEY``) safely: no tags, no aliases, bounded size."""
    if len(text) > MAX_YAML_BYTES:
        raise CompactLMError(f"{where} is {len(text):,} characters; a recipe is at most {MAX_YAML_BYTES:,}.")
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except CompactLMError as err:
        raise CompactLMError(f"{where}: {err}") from None
    except yaml.YAMLError as err:
        raise CompactLMError(f"{where} is not valid YAML ({clip(' '.join(str(err).split()), 300)}).") from err
