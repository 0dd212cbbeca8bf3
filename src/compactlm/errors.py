"""The one exception type for user mistakes.

Library code raises :class:`CompactLMError` for anything a user can fix (a bad path, a
target larger than the source, too little text). The CLI turns it into one line on stderr and
exit status 2. ``assert`` stays reserved for our own invariants.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CompactLMError(Exception):
    """A user-facing error: the message names the bad value, what was expected and the fix."""


def unknown_name(kind: str, name: str, available: Iterable[str]) -> CompactLMError:
    """Build the registry error: "Unknown X 'y'. Did you mean …? Available: …"."""
    choices = sorted(available)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return CompactLMError(f"Unknown {kind} '{name}'.{hint} Available: {', '.join(choices)}.")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` and atomic writer cleans up; the CLI exits 143."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def interrupt_exit_code(err: BaseException) -> int:
    """128 + the signal: 143 for SIGTERM, 130 for Ctrl-C."""
    return 128 + err.signum if isinstance(err, Terminated) else 130
