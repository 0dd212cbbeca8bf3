"""Training checkpoints: atomic directories under ``<run>/checkpoints/step-NNNNNNN``, keep the last K.

A checkpoint holds everything needed to continue bit-identically: trainable modules
(safetensors, fp32), optimizer state (``torch.load(weights_only=True)``: tensors and plain
values only), every process's RNG state (``rng.safetensors`` + ``rng.json``: no pickle, so a
checkpoint someone else wrote cannot run code when resumed) and ``trainer_state.json``
(step, tokens, the run's settings, fingerprints of the teacher and the data). An FSDP run
holds model and optimizer as DCP shards in ``shards/`` instead (:func:`save_sharded_checkpoint`),
written by every process into rank 0's temp directory and renamed by rank 0 after a barrier.
The learning rate is a pure function of the step and the data order a pure function of
(seed, step), so neither needs more than the step.
A directory exists under its final name only once it is complete (temp dir, fsync, rename);
a run killed mid-write leaves a hidden ``.step-*.tmp-*`` directory that the next start removes.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_file, save_model
from torch import nn

from ..errors import CompactLMError
from ..io import atomic_dir, write_json_atomic
from ..parallel import DistInfo, barrier, broadcast_object
from ..readers import clip, load_safetensors, read_json_object, reading

logger = logging.getLogger(__name__)

# Settings that change the arithmetic: a resumed run must use the same ones.
RESUME_KEYS = ("loss", "temperature", "top_k", "js_beta", "clm_weight", "intermediate", "layer_map", "lr", "min_lr",
               "warmup_steps", "weight_decay", "batch_size", "grad_clip", "precision", "teacher_dtype", "seed",
               "total_steps", "num_blocks", "seq_len", "distill", "teacher_fingerprint", "data_fingerprint", "strategy")
# What a checkpoint written before a setting existed means by it.
RESUME_DEFAULTS = {"strategy": "ddp"}

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
RNG_TENSORS, RNG_META = "rng.safetensors", "rng.json"
PICKLE_RNG = "rng.pt"   # written by compactlm before 0.2: a pickle, never loaded
SHARDS = "shards"       # FSDP: model + optimizer as torch.distributed.checkpoint (DCP) shards


class CheckpointMismatch(CompactLMError):
    """A readable checkpoint of another run (other settings, teacher, data or model): never skipped silently."""


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


def nothing_saved(run_dir: str | Path) -> bool:
    """True for what a run stopped before its first checkpoint leaves: ``metrics.jsonl`` and empty or partial folders.

    Such a directory holds nothing worth keeping, so a plain rerun may replace it without --overwrite.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not any(run_dir.iterdir()) or list_checkpoints(run_dir):
        return False
    leftovers = {"metrics.jsonl", CHECKPOINTS, ".export-tmp", "tensorboard"}
    return all(p.name in leftovers for p in run_dir.iterdir())


def remove_partial_checkpoints(run_dir: str | Path) -> None:
    """Delete temp directories left by a run that died while writing a checkpoint."""
    root = checkpoint_root(run_dir)
    for stale in root.glob(".step-*.tmp-*") if root.is_dir() else []:
        logger.info("removing partial checkpoint %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "File too large", "StorageFull")


def _disk_full(err: BaseException) -> bool:
    """An error of a full disk, a quota or a file-size limit (safetensors reports them as text, not OSError)."""
    return (isinstance(err, OSError) and err.errno in DISK_FULL) or any(t in str(err) for t in DISK_FULL_TEXT)


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


@contextlib.contextmanager
def _out_of_space_explained(run_dir: str | Path, step: int, estimate: int) -> Iterator[None]:
    """Turn a full disk while writing checkpoint ``step`` into one clear error: where, how many bytes a checkpoint
    needs (the previous one's size, else ``estimate``) and how many are free; the previous checkpoint is intact
    (the new one was a temp directory, removed by :func:`~compactlm.io.atomic_dir`)."""
    try:
        yield
    except Exception as err:
        root, previous = checkpoint_root(run_dir), latest_checkpoint(run_dir)
        needed = _tree_bytes(previous) if previous is not None else estimate
        free = shutil.disk_usage(root if root.is_dir() else Path(run_dir)).free   # the partial one is removed by now
        if not (_disk_full(err) or free < needed):   # torch.save reports a full disk as "iostream error"
            raise
        kept = (f"the previous checkpoint {previous.name} is intact; free space and continue with --resume"
                if previous is not None else "no checkpoint was written yet; free space and start again")
        size = f"about {needed / 1e6:,.1f} MB ({needed:,} bytes)" if needed else "more than that"
        raise CompactLMError(f"Cannot write checkpoint step-{step:07d} in '{root}': the disk is full "
                             f"({clip(str(err).strip(), 120)}). A checkpoint needs {size}, {free / 1e6:,.1f} MB are "
                             f"free; {kept} (or lower keep_checkpoints).") from err


def save_checkpoint(run_dir: str | Path, step: int, *, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                    state: dict, rng: list[dict], keep: int,
                    export: Callable[[Path], None] | None = None) -> Path:
    """Write ``<run>/checkpoints/step-<step>`` atomically, then delete all but the newest ``keep``.

    A full disk is a :class:`~compactlm.errors.CompactLMError` naming the bytes needed; the
    previous checkpoint stays valid.
    """
    path = checkpoint_root(run_dir) / f"step-{step:07d}"
    weights = sum(p.numel() * 4 for m in modules.values() for p in m.parameters())   # fp32 weights + Adam's 2 moments
    with _out_of_space_explained(run_dir, step, 3 * weights), atomic_dir(path, overwrite=True) as tmp:
        for name, module in modules.items():
            save_model(module, str(tmp / f"{name}.safetensors"))  # handles tied embeddings
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        _write_side_files(tmp, step, state, rng, export)
    _keep_newest(run_dir, keep)
    return path


def save_sharded_checkpoint(run_dir: str | Path, step: int, *, write_shards: Callable[[Path], None], state: dict,
                            rng: list[dict], keep: int, info: DistInfo,
                            export: Callable[[Path], None] | None = None) -> Path:
    """The FSDP checkpoint: every process calls it; ``write_shards(dir)`` (a collective) writes the DCP shards.

    Rank 0 makes the temp directory and tells the others; after the shards, rank 0 writes the
    side files (``state``, ``rng``, ``export``: only rank 0's are used) and, once every process
    has passed the barrier, fsyncs and renames it into place.
    """
    path = checkpoint_root(run_dir) / f"step-{step:07d}"
    with (_out_of_space_explained(run_dir, step, 0),
          atomic_dir(path, overwrite=True) if info.is_main else contextlib.nullcontext() as tmp):
        tmp = Path(broadcast_object(str(tmp) if tmp is not None else None, info))
        write_shards(tmp / SHARDS)
        if info.is_main:
            _write_side_files(tmp, step, state, rng, export)
        barrier(info)  # every shard is on disk before rank 0 renames
    if info.is_main:
        _keep_newest(run_dir, keep)
    return path


def _write_side_files(tmp: Path, step: int, state: dict, rng: list[dict], export: Callable[[Path], None] | None) -> None:
    tensors, meta = encode_rng(rng)
    save_file(tensors, str(tmp / RNG_TENSORS))
    write_json_atomic(tmp / RNG_META, meta)
    if export is not None:
        export(tmp / "student")
    write_json_atomic(tmp / STATE_FILE, {**state, "step": step})  # last: its presence marks a complete checkpoint


def _keep_newest(run_dir: str | Path, keep: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def read_state(path: str | Path) -> dict:
    """``trainer_state.json`` of a checkpoint (step, tokens, settings)."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise CompactLMError(f"'{path}' is not a complete checkpoint (no {STATE_FILE}). Pick another or start afresh.")
    state = read_json_object(path / STATE_FILE, "checkpoint state file")
    if not isinstance(state.get("step"), int) or not isinstance(state.get("settings"), dict):
        raise CompactLMError(f"Checkpoint state file '{path / STATE_FILE}' lacks 'step' or 'settings': the file is "
                             f"damaged. Pick another checkpoint or start afresh.")
    return state


def encode_rng(states: list[dict]) -> tuple[dict[str, torch.Tensor], dict]:
    """Per-process RNG states (see ``distributed.rng_state``) as tensors + JSON values: nothing needs pickle."""
    tensors, meta = {}, []
    for rank, state in enumerate(states):
        version, words, gauss = state["python"]
        tensors[f"{rank}.torch"] = state["torch"]
        tensors[f"{rank}.python"] = torch.tensor(words, dtype=torch.int64)
        entry: dict = {"python": [version, gauss], "cuda": len(state.get("cuda", []))}
        for i, cuda in enumerate(state.get("cuda", [])):
            tensors[f"{rank}.cuda.{i}"] = cuda
        if "numpy" in state:
            kind, keys, pos, has_gauss, cached = state["numpy"]
            tensors[f"{rank}.numpy"] = torch.from_numpy(keys.astype("int64"))
            entry["numpy"] = [kind, int(pos), int(has_gauss), float(cached)]
        meta.append(entry)
    return {k: v.contiguous().cpu() for k, v in tensors.items()}, {"format": "compactlm.rng/1", "ranks": meta}


def decode_rng(tensors: dict[str, torch.Tensor], meta: dict) -> list[dict]:
    """The inverse of :func:`encode_rng`."""

    states = []
    for rank, entry in enumerate(meta["ranks"]):
        version, gauss = entry["python"]
        state = {"torch": tensors[f"{rank}.torch"],
                 "python": (int(version), tuple(int(w) for w in tensors[f"{rank}.python"].tolist()), gauss)}
        if entry.get("cuda"):
            state["cuda"] = [tensors[f"{rank}.cuda.{i}"] for i in range(entry["cuda"])]
        if "numpy" in entry:
            kind, pos, has_gauss, cached = entry["numpy"]
            state["numpy"] = (kind, tensors[f"{rank}.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached)
        states.append(state)
    return states


def _read_rng(path: Path) -> list[dict]:
    if not (path / RNG_TENSORS).is_file():
        old = " It holds a pickled rng.pt (an older compactlm, or someone else's file), which compactlm never " \
              "loads because unpickling runs code." if (path / PICKLE_RNG).exists() else ""
        raise CompactLMError(f"Checkpoint '{path}' has no {RNG_TENSORS}.{old} Start afresh without --resume "
                             f"(or --overwrite the run).")
    meta = read_json_object(path / RNG_META, "checkpoint RNG file")
    tensors = load_safetensors(path / RNG_TENSORS, "checkpoint RNG file")
    with reading(path / RNG_META, "checkpoint RNG file"):
        return decode_rng(tensors, meta)


def load_checkpoint(path: str | Path, *, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer | None,
                    read_shards: Callable[[Path], None] | None = None) -> tuple[dict, list[dict]]:
    """Restore modules and optimizer in place; returns ``(trainer_state, per-rank rng states)``.

    Nothing here unpickles arbitrary objects: weights and RNG states are safetensors, the
    optimizer state goes through ``torch.load(weights_only=True)``. ``read_shards(dir)``
    (FSDP, a collective) reads model and optimizer from the DCP shards instead.
    """
    path = Path(path)
    state = read_state(path)
    rng = _read_rng(path)
    if read_shards is not None:
        if not (path / SHARDS).is_dir():
            raise CompactLMError(f"Checkpoint '{path}' has no {SHARDS}/ folder; it was written by a different kind "
                                 f"of run.")
        try:
            read_shards(path / SHARDS)
        except Exception as err:  # DCP raises its own types for missing or damaged shard files
            raise CompactLMError(f"Checkpoint shards '{path / SHARDS}' cannot be read: {err}") from err
        return state, rng
    for name, module in modules.items():
        file = path / f"{name}.safetensors"
        if not file.is_file():
            raise CompactLMError(f"Checkpoint '{path}' has no {file.name}; it was written by a different kind of run.")
        with reading(file, "checkpoint weights file"):
            missing, unexpected = load_model(module, str(file), strict=False)
        if missing or unexpected:  # tied names are already accounted for by safetensors
            raise CheckpointMismatch(f"Checkpoint '{path}/{file.name}' does not match the model "
                                 f"(missing {missing[:3]}, unexpected {unexpected[:3]}). Was the student changed?")
    if optimizer is not None:
        with reading(path / "optimizer.pt", "checkpoint optimizer file"):
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    return state, rng


def recorded_precision(run_dir: str | Path) -> str | None:
    """The precision the newest readable checkpoint was trained in (``auto`` is resolved once per run)."""
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            return read_state(ckpt)["settings"].get("precision_used")
        except CompactLMError:
            continue
    return None


def resume_from(run_dir: str | Path, settings: dict, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                is_main: bool, read_shards: Callable[[Path], None] | None = None) -> tuple[Path, dict, list[dict]]:
    """Load the newest checkpoint that loads: a damaged newest one is set aside (with a warning) for the one before.

    Returns ``(checkpoint, trainer_state, per-rank rng states)``; refuses a checkpoint whose
    :data:`RESUME_KEYS` settings differ from ``settings``. ``read_shards``: see :func:`load_checkpoint`.
    """
    found = list_checkpoints(run_dir)
    for i, ckpt in enumerate(reversed(found)):
        try:
            state = read_state(ckpt)
            old = {k: state["settings"].get(k, RESUME_DEFAULTS.get(k)) for k in RESUME_KEYS}
            changed = [f"{k}: {old[k]!r} -> {settings.get(k)!r}" for k in RESUME_KEYS if old[k] != settings.get(k)]
            if changed:
                hint = (f" A {old['strategy']} checkpoint cannot continue as {settings.get('strategy')} (whole "
                        f"safetensors weights vs DCP shards): resume with --strategy {old['strategy']}."
                        if old["strategy"] != settings.get("strategy") else "")
                raise CheckpointMismatch(f"Cannot resume from '{ckpt}': settings differ ({'; '.join(changed)}).{hint} "
                                         f"Use the original settings, teacher and data, or start afresh without "
                                         f"--resume.")
            state, rngs = load_checkpoint(ckpt, modules=modules, optimizer=optimizer, read_shards=read_shards)
            return ckpt, state, rngs
        except CheckpointMismatch:
            raise
        except CompactLMError as err:   # a damaged file: the checkpoint before it may be whole
            if i == len(found) - 1:
                raise
            logger.warning("checkpoint %s cannot be loaded (%s); falling back to the one before it", ckpt, err)
            if is_main:
                ckpt.rename(ckpt.with_name(f".{ckpt.name}.damaged-{int(time.time())}"))
    raise CompactLMError(f"--resume: no checkpoint in '{run_dir}/checkpoints'. Run without --resume to start afresh.")
