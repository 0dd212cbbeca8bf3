"""Data parallelism: 2 gloo processes give the 1-process losses (same global batch); the sampler resumes exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distill_fixtures import one_thread  # noqa: F401  (autouse)

from compactlm.distill.sampler import StepSampler
from compactlm.parallel import DistInfo

SCRIPT = Path(__file__).with_name("run_tiny.py")


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r} | {-r["step"] - 1: r["val_kd"] for r in rows if "val_kd" in r}


def test_sampler_splits_global_batch_and_is_stateless():
    one = StepSampler(10, 4, 2, seed=3, info=DistInfo())
    two = [StepSampler(10, 4, 2, seed=3, info=DistInfo(rank=r, world_size=2)) for r in range(2)]
    for step in range(7):  # crosses epochs: 28 samples of 10 blocks
        single = torch.cat([one.indices(step, m) for m in range(one.accumulation)])
        split = torch.cat([s.indices(step, 0) for s in two])
        assert single.tolist() == split.tolist()
    epoch0 = torch.cat([one.indices(s, m) for s in range(2) for m in range(2)]).tolist() + one.indices(2, 0).tolist()
    assert sorted(epoch0) == list(range(10))  # one epoch is a permutation
    fresh = StepSampler(10, 4, 2, seed=3, info=DistInfo())
    assert fresh.indices(5, 1).tolist() == one.indices(5, 1).tolist()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_gloo_processes_match_one_process(tmp_path):
    env = {**os.environ, "COMPACTLM_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "LD_PRELOAD": ""}  # see compactlm.cli.tcmalloc
    common = ["--steps", "4", "--batch", "4", "--micro", "2"]
    single = subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path / "one"), *common], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            str(SCRIPT), str(tmp_path / "two"), *common], env=env, capture_output=True, text=True, timeout=180)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert single.wait(timeout=180) == 0, single.stdout.read()[-3000:]
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) >= 6
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-7), step
    # Only rank 0 wrote: one metrics file, one set of checkpoints, one export.
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert (tmp_path / "two" / "config.json").is_file()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_fsdp2_smoke_chunked_loss_matches_unsharded(tmp_path):
    """The sharded student + chunked loss compute the same loss and gradients (the trainer runs: test_fsdp.py)."""
    env = {**os.environ, "COMPACTLM_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "LD_PRELOAD": ""}  # see compactlm.cli.tcmalloc
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(SCRIPT.with_name("fsdp_smoke.py"))], env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0 and "FSDP OK" in run.stdout, run.stderr[-3000:]
