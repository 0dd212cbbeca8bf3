"""Verbs under ``torchrun --nproc_per_node N -m compactlm ...``: join the process group, quiet the other ranks.

``importance``, ``search`` and ``eval`` share their work out over the processes (each takes a
share of the batches) and every process ends with the one-process result; rank 0 alone prints
and writes. A no-op for one process.
"""

from __future__ import annotations

import argparse

from ..parallel import DistInfo, setup_distributed
from .distill import _quiet_other_ranks


def join_processes(args: argparse.Namespace) -> DistInfo:
    """This process's :class:`DistInfo`; under torchrun, ``args.device`` becomes this rank's device (``cuda:LOCAL_RANK``)."""

    info = setup_distributed(getattr(args, "device", "cpu"))
    if info.distributed:
        _quiet_other_ranks()
        args.device = str(info.device)
    return info
