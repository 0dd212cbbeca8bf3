"""A full disk while a checkpoint is written: one clear error (where, bytes needed, bytes free), exit 2, the
previous checkpoint intact, nothing half-written left; after freeing space, --resume gives the uninterrupted run.

The first test fills the disk by hand (the second checkpoint's weights file fails with ENOSPC half-written);
the second writes on a real tmpfs too small for two checkpoints, where the machine lets us mount one (root).
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from distill_fixtures import one_thread  # noqa: F401  (autouse)
from safetensors.torch import load_file

from compactlm.cli import main
from compactlm.distill import checkpoint
from compactlm.distill.checkpoint import list_checkpoints


@pytest.fixture
def argv(tmp_path, tiny_checkpoint, text_file) -> list[str]:
    teacher = tiny_checkpoint("llama", name="teacher")
    student = tiny_checkpoint("llama", name="student", num_hidden_layers=2, seed=1)
    return ["-q", "distill", "--teacher", str(teacher), "--student", str(student), "--data", str(text_file),
            "--tokens", "512", "--seq-len", "32", "--batch-size", "4", "--micro-batch-size", "2",
            "--heldout-samples", "2", "--precision", "fp32", "--checkpoint-every", "2", "--val-every", "0",
            "--layer-map", "1,3"]


def _same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _no_leftovers(out: Path) -> bool:
    return not [p for p in out.rglob(".*") if ".tmp-" in p.name]


def test_disk_full_mid_checkpoint_keeps_the_previous_one(argv, tmp_path, capsys, monkeypatch):
    assert main([*argv, "--out", str(tmp_path / "reference")]) == 0
    real = checkpoint.save_model

    def filling(module, path):
        if ".step-0000004." in str(path):         # the second checkpoint: half a file, then the disk is full
            Path(path).write_bytes(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(module, path)

    out = tmp_path / "full"
    monkeypatch.setattr(checkpoint, "save_model", filling)
    capsys.readouterr()
    assert main([*argv, "--out", str(out)]) == 2
    (err,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("compactlm distill: error:")]
    assert "disk is full" in err and "step-0000004" in err and str(out / "checkpoints") in err
    assert "bytes)" in err and "MB are free" in err and "step-0000002 is intact" in err and "--resume" in err
    assert [p.name for p in list_checkpoints(out)] == ["step-0000002"] and _no_leftovers(out)
    monkeypatch.setattr(checkpoint, "save_model", real)     # space freed
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    assert _same_weights(out, tmp_path / "reference")


@contextlib.contextmanager
def _tmpfs(path: Path, size: int):
    path.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                                       capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_on_a_real_filesystem(argv, tmp_path, capsys):
    reference = tmp_path / "reference"
    assert main([*argv, "--out", str(reference), "--keep-checkpoints", "2"]) == 0
    one = sum(f.stat().st_size for f in list_checkpoints(reference)[-1].rglob("*") if f.is_file())
    with _tmpfs(tmp_path / "small", int(1.5 * one) + 65536) as disk:      # room for one checkpoint, not two
        out = disk / "run"
        capsys.readouterr()
        assert main([*argv, "--out", str(out), "--keep-checkpoints", "2"]) == 2
        (err,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert "disk is full" in err and "step-0000002 is intact" in err and " bytes), " in err and "MB are free" in err
        assert [p.name for p in list_checkpoints(out)] == ["step-0000002"] and _no_leftovers(out)
        shutil.copytree(out, tmp_path / "moved")                          # the user moves it to a bigger disk
    moved = tmp_path / "moved"
    assert main([*argv, "--out", str(moved), "--keep-checkpoints", "2", "--resume"]) == 0
    assert _same_weights(moved, reference)
