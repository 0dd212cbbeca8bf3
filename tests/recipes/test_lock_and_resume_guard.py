"""One process per --out (compactlm.lock), and what `compactlm run --resume` lets change (recipes/resume.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from run_fixtures import read_state, write_tiny_recipe

from compactlm.cli import main
from compactlm.errors import CompactLMError
from compactlm.lock import lock_path, output_lock
from compactlm.recipes import load_recipe, pipeline
from compactlm.recipes.records import RunState
from compactlm.recipes.resume import check_resume
from compactlm.recipes.run_dir import RunLayout

TRAIN = {"batch_size": 2, "micro_batch_size": 2, "precision": "fp32", "val_every": 0, "checkpoint_every": 1}


@pytest.fixture
def fast_recipe(tmp_path, tiny_checkpoint, text_file):
    """A fixed-architecture step (no search) with a two-step distillation; eval without continuations."""
    def write(tokens: int = 128) -> Path:
        step = {"name": "student", "architecture": {"intermediate_size": 64},
                "distill": {"tokens": tokens, "init": "pruned", "train": TRAIN}}
        return write_tiny_recipe(tmp_path, teacher, text_file, steps=[step],
                                 eval={"tasks": [f"ppl:{text_file}"], "limit": 2, "window": 32, "batch_size": 4,
                                       "prompts": []})
    teacher = tiny_checkpoint("llama")
    return write


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("compactlm"), err[-2000:]
    return lines[0]


def _no_loading(monkeypatch) -> None:
    """A refusal comes before the run loads anything (and so before it writes anything)."""
    def loaded(*_args, **_kwargs):
        raise AssertionError("the refused run went on to load its inputs")
    monkeypatch.setattr(pipeline, "load_tokenizer", loaded)


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _hold_in_another_process(out: Path) -> subprocess.Popen:
    """A process that holds ``out``'s lock until it is killed (waits until it has it)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom compactlm.lock import output_lock\n"
                               f"with output_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(300)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


# ---- two processes on one --out --------------------------------------------------------------------------

def test_second_run_on_the_same_out_is_refused_at_once(tmp_path, fast_recipe, capsys, monkeypatch):
    """A real `compactlm run` holds its --out; a second one (plain, --resume or --overwrite) exits 2 naming its pid,
    before loading anything; the first is not disturbed, and SIGTERM lets go of the lock."""
    recipe, out = fast_recipe(tokens=4_000_000), tmp_path / "run"   # distills long enough to be caught running
    first = subprocess.Popen([sys.executable, "-m", "compactlm", "-q", "run", str(recipe), "--out", str(out),
                              "--no-report"], env={**os.environ, "COMPACTLM_NO_PROGRESS": "1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock, deadline = lock_path(out), time.time() + 60
        while not (lock.is_file() and f'"pid": {first.pid}' in lock.read_text() and RunLayout(out).state.is_file()):
            assert first.poll() is None and time.time() < deadline, first.stderr.read() if first.poll() else "no lock"
            time.sleep(0.2)
        _no_loading(monkeypatch)
        for extra in ([], ["--resume"], ["--overwrite"]):
            start = time.time()
            assert main(["-q", "run", str(recipe), "--out", str(out), "--no-report", *extra]) == 2
            line = _one_line(capsys.readouterr().err)
            assert time.time() - start < 5
            assert f"is in use by another compactlm process: pid {first.pid} on host {socket.gethostname()}" in line
            assert "compactlm" in line.split(f"pid {first.pid}")[1] and str(lock) in line   # its command, the file
        assert first.poll() is None and lock.is_file()            # the first run goes on, its lock in place
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 143, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert not lock.exists()                                      # let go on the way out
    assert read_state(RunLayout(out)).sessions                    # the first run's state is whole


def test_second_distill_on_the_same_out_is_refused_but_not_another_rank(tmp_path, tiny_checkpoint, text_file,
                                                                          capsys, monkeypatch):
    model, out = tiny_checkpoint("llama"), tmp_path / "distilled"
    args = ["--student", str(model), "--teacher", str(model), "--data", str(text_file), "--seq-len", "32",
            "--out", str(out)]
    holder = _hold_in_another_process(out)
    try:
        for verb in (["distill", *args], ["finetune", "--model", str(model), *args[4:]]):
            assert main(["-q", *verb]) == 2
            assert f"in use by another compactlm process: pid {holder.pid} on host" in _one_line(capsys.readouterr().err)
        # rank 1 of a torchrun job shares --out with its rank 0: it takes no lock, so it fails here on the next
        # thing it checks (a student that does not exist), not on the lock
        monkeypatch.setenv("RANK", "1")
        assert main(["-q", "distill", *args[:1], str(tmp_path / "no-student"), *args[2:]]) == 2
        assert "in use" not in _one_line(capsys.readouterr().err)
    finally:
        holder.kill()
        holder.wait()


def test_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path, fast_recipe, capsys, monkeypatch):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out, recipe = tmp_path / "run", fast_recipe()
    lock = lock_path(out)
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "2020-01-01T00:00:00",
                                "command": "compactlm run old.yaml"}))

    def went_on(*_args, **_kwargs):   # past the lock, the run loads its inputs: stop it there
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        raise CompactLMError("went on past the lock")
    monkeypatch.setattr(pipeline, "load_tokenizer", went_on)
    assert main(["-q", "run", str(recipe), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"taking over the lock left by pid {dead.pid} on host {socket.gethostname()}" in err
    assert "no longer running" in err and "went on past the lock" in err and not lock.exists()


def test_lock_left_on_another_host_is_refused_with_the_command_that_clears_it(tmp_path, fast_recipe, capsys,
                                                                                 monkeypatch):
    out, recipe = tmp_path / "run", fast_recipe()
    lock = lock_path(out)
    left = json.dumps({"pid": 4242, "host": "node-17.elsewhere", "started": "2020-01-01T00:00:00"})
    lock.write_text(left)
    _no_loading(monkeypatch)
    assert main(["-q", "run", str(recipe), "--out", str(out)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "pid 4242 on host node-17.elsewhere" in line and f"rm {lock}" in line
    assert lock.read_text() == left and not out.exists()


def test_lock_helper_makes_and_removes_its_folders_and_refuses_in_process(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    with output_lock(out) as held:
        assert held == tmp_path / "a" / "b" / ".run.lock" and json.loads(held.read_text())["pid"] == os.getpid()
        with pytest.raises(CompactLMError, match=f"pid {os.getpid()}"), output_lock(tmp_path / "a" / ".." / "a" / "b" / "run"):
            pass                                                 # another open file: refused like another process
    assert not (tmp_path / "a").exists()                         # nothing left behind
    with output_lock("/") as held:                               # the root has no parent to lock in: the checks refuse it
        assert held is None


# ---- resume with a changed recipe or data ---------------------------------------------------------------

def test_resume_refuses_what_a_finished_stage_read(tmp_path, fast_recipe, capsys, monkeypatch):
    out, recipe = tmp_path / "run", fast_recipe()
    assert main(["-q", "run", str(recipe), "--out", str(out), "--no-report"]) == 0
    capsys.readouterr()
    before = _snapshot(out)
    _no_loading(monkeypatch)
    for change, shown in [("steps.0.distill.tokens=256", "steps.0.distill.tokens: 128 -> 256 (read by student/distill)"),
                          ("data.seed=3", "data.seed: 0 -> 3 (read by every stage)"),
                          ("eval.limit=3", "eval.limit: 2 -> 3 (read by eval)"),
                          ("importance.samples=4", "importance.samples: 8 -> 4 (read by student/importance)")]:
        assert main(["-q", "run", str(recipe), "--out", str(out), "--resume", "--set", change]) == 2
        line = _one_line(capsys.readouterr().err)
        assert shown in line and "eval has finished" in line, line
        assert f"compactlm run {out / 'recipe.yaml'} --out {out} --resume" in line and "--overwrite" in line
    assert main(["-q", "run", str(recipe), "--out", str(out), "--resume", "--set", "dtype=bfloat16"]) == 2
    assert "dtype: 'float32' -> 'bfloat16' (read by every stage)" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_resume_takes_changes_of_stages_that_have_not_started(tmp_path, fast_recipe, capsys):
    """eval.* while eval has not finished; distill.tokens while the distillation has no checkpoint."""
    out, recipe = tmp_path / "run", fast_recipe()
    layout = RunLayout(out)
    assert main(["-q", "run", str(recipe), "--out", str(out), "--no-report"]) == 0
    state = json.loads(layout.state.read_text())
    del state["stages"]["eval"], state["stages"]["student/distill"]   # as if killed in the distillation
    layout.state.write_text(json.dumps(state))
    capsys.readouterr()
    # the distillation has a checkpoint: it has started, so its tokens are fixed; the eval's limit is not
    assert main(["-q", "run", str(recipe), "--out", str(out), "--resume", "--set", "steps.0.distill.tokens=256",
                 "--set", "eval.limit=3", "--no-report"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "steps.0.distill.tokens: 128 -> 256" in line and "student/distill has started (a checkpoint in" in line
    assert "eval.limit" not in line
    shutil.rmtree(layout.step("student").distilled)            # killed before its first checkpoint
    assert main(["-q", "run", str(recipe), "--out", str(out), "--resume", "--set", "steps.0.distill.tokens=256",
                 "--set", "eval.limit=3", "--no-report"]) == 0
    err = capsys.readouterr().err
    assert "changed settings of stages that have not started" in err and "eval.limit: 2 -> 3" in err
    resumed = read_state(layout)
    assert resumed.stages["student/distill"].tokens == 256 and resumed.stages["eval"].limit == 3
    assert resumed.recipe["eval"]["limit"] == 3 and resumed.recipe["steps"][0]["distill"]["tokens"] == 256
    # recipe.yaml follows, and is a recipe that loads again (the way out the refusal names)
    assert load_recipe(layout.recipe).to_dict() == load_recipe(recipe, ["steps.0.distill.tokens=256",
                                                                        "eval.limit=3"]).to_dict()
    assert main(["-q", "run", str(layout.recipe), "--out", str(out), "--resume", "--no-report"]) == 0


def test_resume_refuses_changed_data(tmp_path, fast_recipe, text_file, capsys):
    out, recipe = tmp_path / "run", fast_recipe()
    assert main(["-q", "run", str(recipe), "--out", str(out), "--no-report"]) == 0
    fingerprint = read_state(RunLayout(out)).data_fingerprint
    assert fingerprint
    capsys.readouterr()
    text_file.write_text(text_file.read_text().replace("fox", "cat"))   # same recipe, other text
    before = _snapshot(out)
    assert main(["-q", "run", str(recipe), "--out", str(out), "--resume", "--no-report"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "the data changed" in line and f"the run was started on {fingerprint}" in line and "--overwrite" in line
    assert _snapshot(out) == before


def _state(recipe: dict, *stages: str) -> RunState:
    return RunState.from_dict({"recipe": recipe, "stages": {k: _RECORDS[k.rpartition("/")[2]] for k in stages}})


_RECORDS = {"importance": {"scores": "s", "teacher": "t"}, "search": {"winner": {}, "name": "w", "params": 1},
            "prune": {"model": "p", "architecture": {}}, "distill": {"model": "d", "tokens": 1},
            "correction": {"model": "c"}, "export": {}, "eval": {"rows": [], "heldout_blocks": 1}}


@pytest.mark.parametrize("change, finished, safe", [
    ("export.gguf=[f16]", ["a/importance", "a/search", "a/prune", "a/distill"], True),
    ("export.gguf=[f16]", ["a/importance", "a/search", "a/prune", "a/distill", "export"], False),
    ("steps.0.search.top_k=1", ["a/importance"], True),
    ("steps.0.search.top_k=1", ["a/importance", "a/search"], False),
    ("steps.0.distill.train.lr=0.1", ["a/importance"], True),
    ("steps.0.distill.train.lr=0.1", ["a/importance", "a/search"], False),   # the search's short runs read it
    ("steps.0.distill.tokens=9", ["a/importance", "a/search", "a/prune"], True),
    ("steps.1.target_params=0.5", ["a/importance", "a/search", "a/prune", "a/distill"], True),
    ("steps.1.name=c", ["a/importance", "a/search", "a/prune", "a/distill", "b/importance"], False),
    ("steps.0.name=c", ["a/importance"], False),
    ("correction.tokens=1000", ["a/importance"], False),                 # a new first stage, before finished ones
    ("importance.samples=4", [], True),
    ("data.seed=1", [], False),                                          # the data and teacher: never
    ("teacher=gpt2", [], False),
])
def test_which_changes_a_resume_takes(tmp_path, change, finished, safe):
    base = ["steps=[{name: a, target_params: 0.8}, {name: b, target_params: 0.6}]"]
    old = json.loads(json.dumps(load_recipe(None, base).to_dict()))
    new = json.loads(json.dumps(load_recipe(None, [*base, change]).to_dict()))
    if safe:
        (found,) = check_resume(tmp_path, _state(old, *finished), new)
        assert found.dotted == change.partition("=")[0]
    else:
        with pytest.raises(CompactLMError, match="Cannot resume .* with a changed recipe"):
            check_resume(tmp_path, _state(old, *finished), new)


def test_recipe_yaml_of_a_run_loads_again(tmp_path):
    recipe = load_recipe("fixed")
    path = tmp_path / "recipe.yaml"
    path.write_text(pipeline._recipe_yaml(json.loads(json.dumps(recipe.to_dict()))))
    assert load_recipe(path).to_dict() == recipe.to_dict()
    assert "max_steps" not in yaml.safe_load(path.read_text())["steps"][0]["distill"]["train"]
