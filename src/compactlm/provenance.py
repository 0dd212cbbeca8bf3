"""What wrote a file: compactlm's version, the command, the software versions (``compactlm_provenance.json``)."""

from __future__ import annotations

import json
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
import transformers

PROVENANCE_FILE = "compactlm_provenance.json"

try:
    __version__ = version("compactlm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"


def software_versions() -> dict[str, str]:
    """The versions of this process: compactlm, torch, transformers, Python."""
    return {"compactlm": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def write_provenance(dest: str | Path, provenance: dict | None = None) -> Path:
    """Write ``compactlm_provenance.json`` into ``dest``: ``created``, ``command``, ``software`` + the caller's entries."""
    record = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv),
              "software": software_versions(), **(provenance or {})}
    path = Path(dest) / PROVENANCE_FILE
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path
