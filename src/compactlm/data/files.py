"""Reading documents from local files: plain text and JSON Lines.

How a plain text file is split into documents (each document is followed by one EOS token
when packed):

1. Lines that are exactly ``<|endoftext|>`` separate documents (the GPT-2 / TinyStories
   convention; ``tiny.utf8`` uses it). The marker itself is dropped.
2. Otherwise, a file of WikiExtractor ``<doc ...>`` … ``</doc>`` elements gives one document
   per element, tags dropped (``wiki.utf8`` uses it).
3. Otherwise the whole file is one document.

Why no blank-line or one-line-per-document rule: in the calibration files we ship against,
newlines mean different things (one web page per line in ``c4.utf8``, one paragraph per line
in ``tiny.utf8``, blank lines between paragraphs of the same article in ``wiki.utf8`` and
WikiText's ``wiki.test.raw``), so any such rule would put EOS tokens inside articles for some
of them. A single stream is how exllamav2 (where these files come from) and the usual
WikiText perplexity recipe read such files. For explicit documents use ``.jsonl``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import CompactLMError

TEXT_SUFFIXES = (".txt", ".utf8", ".raw", ".text")
JSONL_SUFFIXES = (".jsonl",)
EOT_MARKER = "<|endoftext|>"

_EOT_LINE = re.compile(r"^[ \t]*" + re.escape(EOT_MARKER) + r"[ \t]*\r?$", re.MULTILINE)
_WIKI_DOC = re.compile(r"<doc\b[^>]*>(.*?)</doc>", re.DOTALL)


def read_text(path: Path) -> str:
    """The whole file decoded as UTF-8 (a leading BOM is dropped)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CompactLMError(f"Cannot read text file '{path}': {err.strerror or err}. "
                             "Check the path and its permissions.") from err
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise CompactLMError(
            f"File '{path}' is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
            f"expected a UTF-8 text file or a .jsonl file. Convert it to UTF-8 or give another source."
        ) from err


def split_text(text: str) -> list[str]:
    """Split the contents of a plain text file into documents (rules in the module docstring).

    Blank documents are dropped; newlines around each document are trimmed.
    """
    if _EOT_LINE.search(text):
        parts = _EOT_LINE.split(text)
    elif text.lstrip().startswith("<doc") and "</doc>" in text:
        parts = _WIKI_DOC.findall(text)
    else:
        parts = [text]
    return [part.strip("\r\n") for part in parts if part.strip()]


def read_text_file(path: Path) -> list[str]:
    """Documents of one plain text file; may be empty when the file holds only whitespace."""
    return split_text(read_text(path))


def read_jsonl_file(path: Path, text_field: str) -> list[str]:
    """The ``text_field`` of every JSON object, one per line; blank lines and blank texts skipped."""
    documents = []
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise CompactLMError(
                f"'{path}' line {lineno} is not valid JSON ({err.msg}); expected one JSON object per line."
            ) from err
        if not isinstance(row, dict):
            raise CompactLMError(
                f"'{path}' line {lineno} is a JSON {type(row).__name__}; expected one JSON object per line."
            )
        if text_field not in row:
            keys = ", ".join(repr(k) for k in row) or "no fields"
            raise CompactLMError(
                f"'{path}' line {lineno} has no field '{text_field}'; it has {keys}. "
                f"Choose the field that holds the text with text_field (--text-field)."
            )
        text = row[text_field]
        if not isinstance(text, str):
            raise CompactLMError(
                f"'{path}' line {lineno}: field '{text_field}' is a JSON {type(text).__name__}, expected a "
                f"string. Choose the field that holds the text with text_field (--text-field)."
            )
        if text.strip():
            documents.append(text)
    return documents


def read_file(path: Path, text_field: str) -> list[str]:
    """Documents of one file: ``.jsonl`` as JSON Lines, anything else as plain text."""
    if path.suffix.lower() in JSONL_SUFFIXES:
        return read_jsonl_file(path, text_field)
    return read_text_file(path)


def list_text_files(folder: Path) -> list[Path]:
    """Text-like and ``.jsonl`` files under ``folder``, recursively, sorted by path.

    Hidden files and folders (a name starting with ``.``) are skipped.
    """
    suffixes = TEXT_SUFFIXES + JSONL_SUFFIXES
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in suffixes
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
