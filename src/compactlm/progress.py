"""Progress bars that library code may use: tqdm, off when COMPACTLM_NO_PROGRESS=1 or not rank 0."""

from __future__ import annotations

import os

from tqdm.auto import tqdm


def progress_disabled() -> bool:
    return os.environ.get("COMPACTLM_NO_PROGRESS") == "1" or int(os.environ.get("RANK", "0")) != 0


def progress(*args, **kwargs) -> tqdm:
    """``tqdm(...)`` with compactlm's switch; pass ``unit="tok"`` and update by tokens for tokens/s."""
    kwargs.setdefault("disable", progress_disabled())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(*args, **kwargs)
