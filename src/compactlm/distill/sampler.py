"""What resume needs besides the weights: the data order as a pure function of the step, and the RNG states."""

from __future__ import annotations

import random

import numpy as np
import torch

from ..parallel import DistInfo


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
    state["numpy"] = np.random.get_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
