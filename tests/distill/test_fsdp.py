"""FSDP2 distillation on 2 gloo processes: the 1-process losses, an exact resume after SIGKILL (of every process, or
of one rank alone, FSDP and DDP), a loadable export.

The runs are launched once per module (``runs``) by torchrun with ``run_tiny.py --strategy fsdp``;
the uninterrupted, the killed and the single-process run start together.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distill_fixtures import one_thread  # noqa: F401  (autouse)
from safetensors.torch import load_file

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")

SCRIPT = Path(__file__).with_name("run_tiny.py")
ENV = {**os.environ, "COMPACTLM_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "LD_PRELOAD": "",  # see compactlm.cli.tcmalloc
       "HF_HUB_OFFLINE": "1"}
COMMON = ["--steps", "4", "--batch", "4", "--micro", "2"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT)]


def _start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, expect_ok: bool = True) -> str:
    out, _ = proc.communicate(timeout=240)
    assert (proc.returncode == 0) == expect_ok, out[-3000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fsdp")
    dirs = {name: root / name for name in ("one", "fsdp", "killed", "ddp", "fsdp_rank", "ddp_rank")}
    procs = [_start([sys.executable, str(SCRIPT), str(dirs["one"]), *COMMON]),
             _start([*TORCHRUN, str(dirs["fsdp"]), *COMMON, "--strategy", "fsdp"]),
             _start([*TORCHRUN, str(dirs["killed"]), *COMMON, "--strategy", "fsdp", "--kill-at", "3"]),
             _start([*TORCHRUN, str(dirs["ddp"]), *COMMON, "--strategy", "ddp"])]
    # one rank alone SIGKILLed after step 3: the other must stop too (bounded by _finish's timeout), saying why
    rank_kills = {s: _start([*TORCHRUN, str(dirs[f"{s}_rank"]), *COMMON, "--strategy", s, "--kill-at", "3",
                             "--kill-rank", "1"]) for s in ("fsdp", "ddp")}
    _finish(procs[0]), _finish(procs[1]), _finish(procs[3])
    _finish(procs[2], expect_ok=False)   # SIGKILL after step 3: torchrun reports the dead worker
    for strategy, proc in rank_kills.items():
        dirs[f"{strategy}_rank_out"] = _finish(proc, expect_ok=False)
        _finish(_start([*TORCHRUN, str(dirs[f"{strategy}_rank"]), *COMMON, "--strategy", strategy, "--resume"]))
    # what the kill left: the step-2 checkpoint and no export (so the resume below must continue, not restart)
    dirs["left"] = sorted(p.name for p in (dirs["killed"] / "checkpoints").iterdir() if not p.name.startswith("."))
    dirs["left_export"] = (dirs["killed"] / "config.json").exists()
    dirs["kept_rows"] = [r for r in _rows(dirs["killed"]) if r["step"] <= 2]   # with their timestamps
    # One process resuming an FSDP checkpoint is a DDP run: refused, with the reason, before anything is written.
    dirs["refused"] = _finish(_start([sys.executable, str(SCRIPT), str(dirs["killed"]), *COMMON, "--resume"]),
                              expect_ok=False)
    _finish(_start([*TORCHRUN, str(dirs["killed"]), *COMMON, "--strategy", "fsdp", "--resume"]))
    return dirs


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_fsdp_two_processes_match_one_process(runs):
    """Same global batch: losses within rel 1e-5 (measured: about 2e-7, the order of the gradient reductions).

    The weights after 4 AdamW steps at lr 3e-3 agree to atol 1e-5 + rtol 1e-4 (measured 3e-6 at worst: Adam divides
    near-zero gradients by their own size, which turns reduction-order noise into lr-sized steps).
    """
    one = {(r["step"], k): r[k] for r in _rows(runs["one"]) for k in ("loss", "val_kd") if k in r}
    two = {(r["step"], k): r[k] for r in _rows(runs["fsdp"]) for k in ("loss", "val_kd") if k in r}
    assert one.keys() == two.keys() and len(one) >= 6
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), key
    a, b = load_file(runs["one"] / "model.safetensors"), load_file(runs["fsdp"] / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    state = json.loads((runs["fsdp"] / "checkpoints" / "step-0000004" / "trainer_state.json").read_text())
    assert state["settings"]["strategy"] == "fsdp"
    assert sorted(p.name for p in (runs["fsdp"] / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]


def test_fsdp_resume_after_sigkill_is_exact(runs):
    """Killed after step 3 (checkpoint at 2), resumed: the final weights equal the uninterrupted run's bit for bit."""
    resumed, straight = load_file(runs["killed"] / "model.safetensors"), load_file(runs["fsdp"] / "model.safetensors")
    assert resumed.keys() == straight.keys()
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name
    assert [r["loss"] for r in _rows(runs["killed"]) if "loss" in r][-1] == \
        [r["loss"] for r in _rows(runs["fsdp"]) if "loss" in r][-1]
    assert "strategy: 'fsdp' -> 'ddp'" in runs["refused"] and "resume with --strategy fsdp" in runs["refused"]
    assert runs["left"] == ["step-0000002"] and not runs["left_export"]
    # it continued from the step-2 checkpoint: the rows up to step 2 are the killed session's own (same
    # timestamps), and every step appears once, as in the uninterrupted run
    assert runs["kept_rows"] and [r for r in _rows(runs["killed"]) if r["step"] <= 2] == runs["kept_rows"]
    assert [r["step"] for r in _rows(runs["killed"])] == [r["step"] for r in _rows(runs["fsdp"])]


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_one_rank_killed_stops_the_job_then_resume_is_exact(runs, strategy):
    """Rank 1 dies (SIGKILL) after step 3: rank 0's next collective fails, it says so in one error naming the newest
    checkpoint and the way out, torchrun ends the job; resuming the whole job gives the uninterrupted weights."""
    out = runs[f"{strategy}_rank_out"]
    assert "Signal 9 (SIGKILL) received" in out                          # torchrun names the dead rank
    # rank 0 either reaches its next collective first (our error) or is stopped by torchrun first (SIGTERM)
    said = "another process of this job stopped" in out and "the newest complete checkpoint is step-0000002" in out
    assert (said and "same command plus --resume" in out) or "Signal 15 (SIGTERM) received" in out
    resumed, straight = (load_file(runs[name] / "model.safetensors") for name in (f"{strategy}_rank", strategy))
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_fsdp_export_loads_and_equals_the_sharded_state(runs, tmp_path):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(runs["fsdp"])
    dcp_to_torch_save(runs["fsdp"] / "checkpoints" / "step-0000004" / "shards", tmp_path / "full.pt")
    sharded = torch.load(tmp_path / "full.pt", weights_only=True)["model"]
    exported = model.state_dict()
    student = {k.removeprefix("student."): v for k, v in sharded.items() if k.startswith("student.")}
    assert student.keys() <= exported.keys() and len(student) > 10
    for name, value in student.items():
        assert torch.equal(exported[name], value), name
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(model(ids).logits).all()


def test_accelerate_launch_runs_fsdp(tmp_path):
    """``accelerate launch`` only sets the torchrun environment; setup_distributed reads it (gloo on CPU)."""
    if shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("accelerate is not installed")
    port = str(29500 + os.getpid() % 1000)
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
           str(SCRIPT), str(tmp_path / "run"), "--steps", "2", "--batch", "4", "--micro", "2", "--strategy", "fsdp"]
    _finish(_start(cmd))
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-0000002" / "trainer_state.json").read_text())
    assert state["settings"]["strategy"] == "fsdp" and (tmp_path / "run" / "config.json").is_file()


def test_resolve_strategy_one_process_is_plain():
    from compactlm.distill import TrainArgs
    from compactlm.distill.sharding import resolve_strategy
    from compactlm.parallel import DistInfo

    two = DistInfo(rank=0, world_size=2)
    assert resolve_strategy(TrainArgs(strategy="fsdp"), DistInfo(), None, None) == "ddp"
    assert resolve_strategy(TrainArgs(strategy="auto"), DistInfo(), None, None) == "ddp"
    assert resolve_strategy(TrainArgs(strategy="fsdp"), two, None, None) == "fsdp"
    assert resolve_strategy(TrainArgs(strategy="ddp"), two, None, None) == "ddp"


def test_auto_strategy_is_ddp_when_it_fits_and_fsdp_when_not(monkeypatch):
    import torch
    from helpers import make_tiny_model

    from compactlm.distill import TrainArgs
    from compactlm.distill.sharding import resolve_strategy
    from compactlm.parallel import DistInfo
    from compactlm.sizing import fit
    from compactlm.sizing.device import DeviceSpec

    teacher = make_tiny_model("llama", dtype=torch.float32, seed=0)
    student = make_tiny_model("llama", dtype=torch.float32, seed=1, num_hidden_layers=2)
    two = DistInfo(rank=0, world_size=2, device=torch.device("cpu"))
    auto = TrainArgs(strategy="auto", micro_batch_size=2)
    for memory, expected in ((2**40, "ddp"), (2**20, "fsdp")):   # a roomy device, then one DDP cannot fit
        monkeypatch.setattr(fit, "local_device", lambda _type, m=memory: DeviceSpec("test", "cpu", m))
        assert resolve_strategy(auto, two, student, teacher, 64, "fp32") == expected
