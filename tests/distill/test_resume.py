"""Resume after SIGKILL gives bit-identical weights; checkpoints are atomic and pruned to the last K."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from distill_fixtures import one_thread  # noqa: F401  (autouse)
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("run_tiny.py")


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COMPACTLM_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), str(out), *extra], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sigkill_then_resume_is_bit_identical(tmp_path, precision):
    full = subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path / "full"), "--precision", precision],
                            env={**os.environ, "COMPACTLM_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = _run(tmp_path / "resumed", "--kill-at", "5", "--precision", precision)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    ckpts = sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir())
    assert ckpts == ["step-0000002", "step-0000004"]          # keep_checkpoints=2; step 5 never saved
    assert not (tmp_path / "resumed" / "config.json").exists()  # no export from a killed run
    resumed = _run(tmp_path / "resumed", "--resume", "--precision", precision)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert full.wait(timeout=120) == 0, full.stdout.read()[-2000:]

    a = load_file(tmp_path / "full" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].equal(b[key]), key
    # The projection of the intermediate-state loss is checkpointed but not exported.
    assert (tmp_path / "full" / "checkpoints" / "step-0000006" / "intermediate.safetensors").is_file()
    assert not any("projection" in k for k in a)
    # metrics.jsonl reads as one run: the steps after the checkpoint are not duplicated.
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    full_steps = [json.loads(line)["step"] for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert steps == full_steps


def test_sigterm_checkpoints_then_resume_matches(tmp_path):
    full = subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path / "full"), "--intermediate", "off"],
                            env={**os.environ, "COMPACTLM_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stopped = _run(tmp_path / "run", "--term-at", "2", "--intermediate", "off")
    assert stopped.returncode == 143, stopped.stderr[-2000:]  # 128 + SIGTERM
    assert (tmp_path / "run" / "checkpoints" / "step-0000003").is_dir()  # saved at the end of the next step
    resumed = _run(tmp_path / "run", "--resume", "--intermediate", "off")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert full.wait(timeout=120) == 0
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    assert all(a[k].equal(b[k]) for k in a)


def test_resume_refuses_changed_settings(tmp_path):
    assert _run(tmp_path / "run", "--steps", "2").returncode == 0
    changed = _run(tmp_path / "run", "--steps", "2", "--resume", "--intermediate", "off")
    assert changed.returncode != 0 and "settings differ" in changed.stderr
