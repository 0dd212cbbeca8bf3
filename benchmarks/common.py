"""What the benchmark scripts share: where things are, the ``__main__`` wrapper, fresh-process arms, memory sampling.

Importing this module imports neither torch nor compactlm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]       # the repository
RESULTS = ROOT / "benchmarks" / "results"        # the figures the README and docs quote
DOCS = ROOT / "docs"
SHARED_DATA = ROOT.parent / "shared" / "data"    # task files and text next to the checkout, where present


def data_dir() -> str | None:
    """Task data: ``$COMPACTLM_DATA_DIR``, else ../shared/data where present, else None (compactlm's own search)."""
    return os.environ.get("COMPACTLM_DATA_DIR") or (str(SHARED_DATA) if SHARED_DATA.is_dir() else None)


def run_script(main) -> None:
    """The benchmarks' ``__main__``: no progress bars (a benchmark prints its own table), a compactlm error is
    one line and exit code 2, else ``main()``'s return value is the exit code."""
    os.environ.setdefault("COMPACTLM_NO_PROGRESS", "1")
    from transformers.utils import logging as hf_logging

    from compactlm.errors import CompactLMError

    hf_logging.disable_progress_bar()
    try:
        code = main()
    except CompactLMError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    sys.exit(code)


def fmt(value, spec: str = ".2f") -> str:
    """``value`` formatted, or an en dash for a missing one (tables)."""
    return "–" if value is None else format(value, spec)


class ChildFailed(RuntimeError):
    """A fresh-process arm exited non-zero; the message is the last line of its stderr."""


def run_child(module: str, *args: str, env: dict | None = None) -> dict:
    """``python -m MODULE ARGS`` in a fresh process (thread pools, allocators and peak memory of its own; the
    repository on its path wherever the caller runs); the JSON object its stdout ends with."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-m", module, *map(str, args)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        raise ChildFailed(lines[-1][:300])
    return json.loads(done.stdout.strip().splitlines()[-1])


def rss_bytes() -> int:
    """This process's resident set (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """``with PeakRSS() as m: ...``: ``m.peak`` is the largest resident set sampled every ``interval`` seconds
    from entry to exit, ``m.base`` the resident set at entry (bytes)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.base = self.peak = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
