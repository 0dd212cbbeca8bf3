"""The process group of the whole package: torchrun/accelerate environment, rank checks, collectives.

``torchrun`` and ``accelerate launch`` both set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
``MASTER_ADDR/PORT``; :func:`setup_distributed` reads them and starts NCCL on CUDA, gloo on CPU.
Every stage that splits work over processes (importance, evaluation, search, distillation) speaks
through these helpers; for one process each of them is the identity. How a model is wrapped for
training (DDP, FSDP2) is the trainer's business: :mod:`compactlm.distill.sharding`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import CompactLMError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` → ``cuda:<local_rank>`` when CUDA is available, else ``cpu``."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CompactLMError(f"Device '{device}' was requested but CUDA is not available. Use --device cpu or auto.")
    return dev


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun/accelerate; a no-op for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over processes (in place on a copy); identity for one process."""
    if not info.distributed:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def gather_objects(obj, info: DistInfo) -> list:
    """Every process's ``obj``, in rank order (on every rank)."""
    if not info.distributed:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def is_mine(index: int, info: DistInfo | None) -> bool:
    """Whether work item ``index`` (a batch) falls to this process: items go round-robin, ``index % world_size``."""
    return info is None or index % info.world_size == info.rank


def gather_shares(local: list, info: DistInfo | None) -> list:
    """Every process's results of its :func:`is_mine` items, back in item order (on every rank).

    Process ``r`` passes the results of items ``r, r + W, ...`` in order; item ``i`` is then
    ``parts[i % W][i // W]``. The one-process list comes back unchanged.
    """
    if info is None or not info.distributed:
        return list(local)
    parts = gather_objects(list(local), info)
    return [parts[i % info.world_size][i // info.world_size] for i in range(sum(map(len, parts)))]


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# How the backends report a process of the job that died: gloo's socket errors, NCCL's abort, a store timeout.
PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Socket Timeout", "Broken pipe",
             "communicator was aborted", "NCCL communicator", "Timed out")


def peer_lost(err: BaseException, info: DistInfo) -> bool:
    """True when ``err`` is a collective failing because another process of the job is gone."""
    if info.world_size <= 1 or not isinstance(err, RuntimeError):
        return False
    dist_error = getattr(dist, "DistError", ())
    return (bool(dist_error) and isinstance(err, dist_error)) or any(text in str(err) for text in PEER_LOST)
