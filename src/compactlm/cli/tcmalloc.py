"""Run the command line under tcmalloc when the machine has it: a measured CPU lever, not a guess.

PyTorch's CPU training step allocates and frees many large, short-lived buffers; glibc's malloc
returns them to the kernel and page-faults them back every step. Google's tcmalloc keeps them.
On the 2-core development CPU the distillation step ran 1.4-2.2x faster with it
(``benchmarks/cpu_levers.py``, numbers in ``benchmarks/results/cpu_levers.json``); jemalloc
gave less. An allocator must be loaded before the process starts, so the ``compactlm``
console command (:func:`compactlm.cli.entry`) re-executes itself once with ``LD_PRELOAD`` when Debian/Ubuntu's
``libtcmalloc-minimal4`` (or a Fedora/Arch equivalent) is installed. Nothing happens when it is
not, when ``COMPACTLM_ALLOCATOR=system`` is set, or when something is already preloaded.
Library use (``import compactlm``) is never affected.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TCMALLOC = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
            "/usr/lib64/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4")
MARK = "COMPACTLM_ALLOCATOR_ACTIVE"


def tcmalloc_path() -> str | None:
    return next((p for p in TCMALLOC if Path(p).is_file()), None)


def reexec_under_tcmalloc(argv: list[str]) -> None:
    """Replace this process by ``python -m compactlm ARGV`` with tcmalloc preloaded, if it applies."""
    if sys.platform != "linux" or os.environ.get(MARK) or os.environ.get("COMPACTLM_ALLOCATOR", "tcmalloc") == "system":
        return
    if os.environ.get("LD_PRELOAD"):        # the user (or a launcher) chose an allocator already
        return
    if "LOCAL_RANK" in os.environ:          # torchrun workers: gloo aborted at exit under tcmalloc (~1 in 5 runs
        return                              # of the 2-process FSDP test here); multi-process jobs keep glibc
    lib = tcmalloc_path()
    if lib is None:
        return
    env = {**os.environ, "LD_PRELOAD": lib, MARK: lib}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "compactlm", *argv], env)
