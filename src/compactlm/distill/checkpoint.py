"""Training checkpoints: atomic directories under ``<run>/checkpoints/step-NNNNNNN``, keep the last K.

A checkpoint holds everything needed to continue bit-identically: trainable modules
(safetensors, fp32), optimizer state, every process's RNG state and ``trainer_state.json``
(step, tokens, the run's settings). The learning rate is a pure function of the step and
the data order a pure function of (seed, step), so neither needs more than the step.
A directory exists under its final name only once it is complete (temp dir, fsync, rename);
a run killed mid-write leaves a hidden ``.step-*.tmp-*`` directory that the next start removes.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from ..errors import CompactLMError
from ..io import atomic_dir, write_json_atomic

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def remove_partial_checkpoints(run_dir: str | Path) -> None:
    """Delete temp directories left by a run that died while writing a checkpoint."""
    root = checkpoint_root(run_dir)
    for stale in root.glob(".step-*.tmp-*") if root.is_dir() else []:
        logger.info("removing partial checkpoint %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


def save_checkpoint(run_dir: str | Path, step: int, *, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                    state: dict, rng: list[dict], keep: int,
                    export: Callable[[Path], None] | None = None) -> Path:
    """Write ``<run>/checkpoints/step-<step>`` atomically, then delete all but the newest ``keep``."""
    path = checkpoint_root(run_dir) / f"step-{step:07d}"
    with atomic_dir(path, overwrite=True) as tmp:
        for name, module in modules.items():
            save_model(module, str(tmp / f"{name}.safetensors"))  # handles tied embeddings
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng, tmp / "rng.pt")
        if export is not None:
            export(tmp / "student")
        write_json_atomic(tmp / STATE_FILE, {**state, "step": step})
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return path


def read_state(path: str | Path) -> dict:
    """``trainer_state.json`` of a checkpoint (step, tokens, settings)."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise CompactLMError(f"'{path}' is not a complete checkpoint (no {STATE_FILE}). Pick another or start afresh.")
    return json.loads((path / STATE_FILE).read_text())


def load_checkpoint(path: str | Path, *, modules: dict[str, nn.Module],
                    optimizer: torch.optim.Optimizer | None) -> tuple[dict, list[dict]]:
    """Restore modules and optimizer in place; returns ``(trainer_state, per-rank rng states)``."""
    path = Path(path)
    state = read_state(path)
    for name, module in modules.items():
        file = path / f"{name}.safetensors"
        if not file.is_file():
            raise CompactLMError(f"Checkpoint '{path}' has no {file.name}; it was written by a different kind of run.")
        missing, unexpected = load_model(module, str(file), strict=False)
        if missing or unexpected:  # tied names are already accounted for by safetensors
            raise CompactLMError(f"Checkpoint '{path}/{file.name}' does not match the model "
                                 f"(missing {missing[:3]}, unexpected {unexpected[:3]}). Was the student changed?")
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=False)  # our own file: python/numpy RNG tuples
    return state, rng

