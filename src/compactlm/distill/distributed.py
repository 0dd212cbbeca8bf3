"""Data parallelism helpers: process group from torchrun/accelerate env vars, rank-0 checks, a resumable sampler.

``torchrun`` and ``accelerate launch`` both set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
``MASTER_ADDR/PORT``; :func:`setup_distributed` reads them and starts NCCL on CUDA, gloo on CPU.
:func:`resolve_strategy` picks DDP or FSDP and :func:`wrap_model` applies it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import CompactLMError

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


def resolve_strategy(args, info: DistInfo, student: nn.Module, teacher: nn.Module | None, seq_len: int = 512,
                     precision: str = "fp32") -> str:
    """``ddp`` or ``fsdp``: what ``--strategy`` (``args.strategy``) means for this run.

    One process has nothing to shard: always ``ddp`` (the plain module). ``auto`` asks the
    memory model of ``compactlm plan`` (:func:`compactlm.plan.choose_strategy`) with the run's
    sequence length and resolved precision. This is the one function that decides.
    """
    if not info.distributed:
        if args.strategy == "fsdp":
            logger.info("--strategy fsdp with one process: nothing to shard, training the plain model")
        return "ddp"
    if args.strategy != "auto":
        return args.strategy
    from ..plan import choose_strategy  # lazy: the planner imports the search, which imports the trainer

    return choose_strategy(args, info, student, teacher, seq_len, precision)


def wrap_model(module: nn.Module, info: DistInfo, strategy: str = "ddp", *, student: nn.Module | None = None,
               bf16: bool = False) -> nn.Module:
    """``module`` as the training step calls it: itself for one process, DDP or FSDP2 for several.

    The one place that knows how the trainable module is parallelised. ``ddp`` returns a
    wrapper; validation, checkpoints and the export read the unwrapped ``module``. ``fsdp``
    shards ``student``'s decoder layers, then ``module``, in place
    (:func:`compactlm.distill.sharding.shard_student`): the result *is* ``module``, its
    parameters DTensors, so build the optimizer afterwards.
    """
    if not info.distributed:
        return module
    if strategy == "fsdp":
        from .sharding import shard_student

        assert student is not None, "fsdp shards the student's decoder layers: pass student="
        return shard_student(module, student, info, bf16)
    device = info.device
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def no_sync(model: nn.Module, last_micro_batch: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) on all but the last micro-batch of a step."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if last_micro_batch else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # an FSDP2 module
        model.set_requires_gradient_sync(last_micro_batch)
    return contextlib.nullcontext()


def norm_value(norm: torch.Tensor) -> float:
    """The norm ``clip_grad_norm_`` returned as a float: under FSDP it is a replicated DTensor (same on every rank)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class StepSampler:
    """Which blocks each process reads at each step: a pure function of ``(step, micro)``.

    Sample position ``p = step * batch_size + i`` reads block ``perm_e[p mod N]`` where
    ``e = p // N`` and ``perm_e`` is a permutation seeded by ``seed + e``. Process ``r``
    takes the r-th contiguous slice of the global batch and splits it into micro-batches.
    Resuming at step s therefore needs only s: there is no iterator state to save, and a
    run on W processes reads exactly the same global batches as a run on one.
    """

    def __init__(self, num_blocks: int, batch_size: int, micro_batch_size: int, seed: int, info: DistInfo) -> None:
        self.num_blocks, self.batch_size, self.micro = num_blocks, batch_size, micro_batch_size
        self.seed, self.info = seed, info
        self.per_rank = batch_size // info.world_size
        self.accumulation = self.per_rank // micro_batch_size
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed + epoch)
            self._perms[epoch] = torch.randperm(self.num_blocks, generator=gen)
            if len(self._perms) > 3:  # a batch spans at most two epochs; drop the oldest other one
                del self._perms[next(e for e in self._perms if e != epoch)]
        return self._perms[epoch]

    def indices(self, step: int, micro: int) -> torch.Tensor:
        """Block indices ``(micro_batch_size,)`` of micro-batch ``micro`` of ``step`` on this process."""
        first = step * self.batch_size + self.info.rank * self.per_rank + micro * self.micro
        positions = range(first, first + self.micro)
        return torch.stack([self._perm(p // self.num_blocks)[p % self.num_blocks] for p in positions])


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        state["numpy"] = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
