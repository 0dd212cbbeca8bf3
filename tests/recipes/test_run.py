"""`compactlm run` end to end on a tiny model: stages, outputs, report, resume, errors."""

from __future__ import annotations

import json

import pytest
import torch
from run_fixtures import read_state, write_tiny_recipe
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from compactlm.cli import main
from compactlm.provenance import PROVENANCE_FILE, software_versions
from compactlm.recipes import load_recipe, pipeline, run
from compactlm.recipes.records import DistillRecord, ImportanceRecord, RunState, SearchRecord
from compactlm.recipes.run_dir import RunLayout
from compactlm.report import render_report
from compactlm.search import ranking


@pytest.fixture
def tiny_recipe(tmp_path, tiny_checkpoint, text_file):
    return write_tiny_recipe(tmp_path, tiny_checkpoint("llama", initializer_range=0.3), text_file)  # peaky logits


def test_run_end_to_end(tmp_path, tiny_recipe, capsys):
    out = tmp_path / "run"
    layout = RunLayout(out)
    step = layout.step("student")
    assert main(["-q", "run", str(tiny_recipe), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "student:" in printed and "report:" in printed and "heldout_ppl" in printed
    # greedy continuations of the eval prompts, teacher / prune / student side by side, distinct-2 in the table
    assert "greedy continuations" in printed and "'Photosynthesis is the process by which'" in printed
    assert "distinct_2" in printed
    state = read_state(layout)
    assert list(state.stages) == ["student/importance", "student/search", "student/prune", "student/distill", "eval"]
    assert isinstance(state.stages["student/importance"], ImportanceRecord)
    # the search table: every candidate has a proxy loss, the top 2 a retrained loss, one is selected
    table = json.loads(step.search.candidates_json.read_text())
    rows = table["candidates"]
    assert len(rows) >= 2 and all(r["proxy_loss"] > 0 for r in rows)
    assert sum(r["retrained_loss"] is not None for r in rows) == 2 and sum(r["selected"] for r in rows) == 1
    assert step.search.candidates_csv.read_text().startswith("name,hidden_size")
    # the student is a plain checkpoint of the chosen architecture, continuing the winner's search run
    student = AutoModelForCausalLM.from_pretrained(step.distilled)
    winner = table["winner"]
    assert student.config.intermediate_size == winner["intermediate_size"]
    assert student.num_parameters() == winner["params"]
    found, distilled = state.stages["student/search"], state.stages["student/distill"]
    assert isinstance(found, SearchRecord) and isinstance(distilled, DistillRecord)
    assert found.name == winner["name"] and found.precision == "fp32"
    assert found.retrained == str(step.search.retrained(winner["name"])) == distilled.initialised_from
    assert distilled.continues_search and distilled.precision == "fp32" and distilled.tokens == 512
    # one exporter: the pruned and the distilled checkpoints both record the software that wrote them
    for model_dir in (step.pruned, step.distilled):
        provenance = json.loads((model_dir / PROVENANCE_FILE).read_text())
        assert provenance["software"] == software_versions()
        assert (model_dir / "prune_plan.json").is_file()
    # the run records its software and hardware when it starts
    (session,) = state.sessions
    assert session.software == software_versions() and session.hardware.cpu and session.hardware.device.startswith("cpu")
    evaluation = json.loads(layout.eval.read_text())
    ppl = {r["model"]: r["metrics"]["heldout_ppl"] for r in evaluation["rows"]}
    for r in evaluation["rows"]:
        assert len(r["continuations"]) == 4 and 0 < r["metrics"]["distinct_2"] <= 1
    assert set(ppl) == {"teacher", "student: pruned", "student: distilled"}
    assert all(v > 1 for v in ppl.values())
    # a random teacher's perplexity means nothing; distillation must bring the student closer to it
    records = [json.loads(line) for line in step.distill_metrics.read_text().splitlines()]
    val_kd = [r["val_kd"] for r in records if "val_kd" in r]
    assert len(val_kd) >= 2 and val_kd[-1] < val_kd[0]
    # the report embeds every figure
    report = layout.report.read_text()
    assert report.count("data:image/png;base64,") >= 5
    for heading in ("Teacher vs student", "Greedy continuations", "Importance", "Search", "Training", "Settings",
                    "Software", "Hardware"):
        assert heading in report
    assert f"<code>{found.retrained}</code> (the search run of the winner)" in report   # from the record
    assert session.hardware.cpu in report and "not recorded" not in report


def test_report_shows_the_runs_machine_not_the_renderers(tmp_path, tiny_recipe):
    """Software and hardware come from run_state.json; a run without them says "not recorded"."""
    out = tmp_path / "run"
    layout = RunLayout(out)
    run(load_recipe(tiny_recipe), out)
    data = json.loads(layout.state.read_text())
    data["sessions"][0]["software"]["torch"] = "0.0.1-of-the-run"
    data["sessions"][0]["hardware"].update(cpu="The Run's CPU 9000", gpus=["Run GPU 80GB"])
    layout.state.write_text(json.dumps(data))
    report = render_report(out).read_text()
    assert "0.0.1-of-the-run" in report and "The Run&#x27;s CPU 9000" in report and "Run GPU 80GB" in report
    assert software_versions()["torch"] not in report.split("<h2>Software</h2>")[1]
    del data["sessions"]                        # a run directory written before sessions were recorded
    layout.state.write_text(json.dumps(data))
    report = render_report(out).read_text()
    assert report.count("not recorded") == 2
    assert RunState.from_dict(data).sessions == []


def test_run_resume_after_crash_matches_uninterrupted(tmp_path, tiny_recipe, monkeypatch):
    recipe = load_recipe(tiny_recipe)
    reference = run(recipe, tmp_path / "reference")

    # crash 1: in the middle of the proxy scoring of the search
    calls = {"n": 0}
    real_loss = ranking.lm_loss

    def failing_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash in the search")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(ranking, "lm_loss", failing_loss)
    with pytest.raises(RuntimeError, match="simulated crash in the search"):
        run(recipe, tmp_path / "crashed")
    crashed = RunLayout(tmp_path / "crashed")
    saved = json.loads(crashed.step("student").search.state.read_text())
    assert len(saved["proxy"]) == 2                       # two candidates were scored before the crash
    monkeypatch.setattr(ranking, "lm_loss", real_loss)

    # crash 2: during the final distillation, after its step-4 checkpoint
    real_distill = pipeline.distill

    def crashing_distill(*args, **kwargs):
        def on_step(step):
            if step == 5:
                raise RuntimeError("simulated crash in distillation")
        return real_distill(*args, on_step=on_step, **kwargs)

    monkeypatch.setattr(pipeline, "distill", crashing_distill)
    with pytest.raises(RuntimeError, match="simulated crash in distillation"):
        run(recipe, tmp_path / "crashed", resume=True)
    state = read_state(crashed)
    assert "student/search" in state.stages and "student/distill" not in state.stages
    monkeypatch.setattr(pipeline, "distill", real_distill)

    resumed = run(recipe, tmp_path / "crashed", resume=True)
    a = load_file(str(reference.student / "model.safetensors"))
    b = load_file(str(resumed.student / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    reference_search = RunLayout(tmp_path / "reference").step("student").search
    assert json.loads(crashed.step("student").search.candidates_json.read_text())["candidates"] == \
        json.loads(reference_search.candidates_json.read_text())["candidates"]
    # every start and resume is a session of the run
    assert len(read_state(crashed).sessions) == 3


def test_resume_refuses_a_changed_recipe(tmp_path, tiny_recipe, capsys):
    out = tmp_path / "run"
    assert main(["-q", "run", str(tiny_recipe), "--out", str(out), "--set", "steps.0.distill.tokens=0",
                 "--no-report"]) == 0
    capsys.readouterr()
    assert main(["-q", "run", str(tiny_recipe), "--out", str(out), "--resume", "--set", "steps.0.distill.tokens=128"]) == 2
    assert "steps.0.distill.tokens: 0 -> 128" in capsys.readouterr().err
    assert main(["-q", "run", str(tiny_recipe), "--out", str(out)]) == 2     # exists: needs --resume or --overwrite
    assert "--resume" in capsys.readouterr().err
    assert main(["-q", "run", str(tiny_recipe), "--out", str(tmp_path / "new"), "--resume"]) == 2
    assert "Run without --resume" in capsys.readouterr().err


def test_iterative_recipe_with_correction_and_fixed_architecture(tmp_path, tiny_checkpoint, text_file):
    """Teacher correction, then a fixed-architecture step, then a searched step pruned from its student."""
    train = {"batch_size": 2, "micro_batch_size": 2, "precision": "fp32", "val_every": 0, "checkpoint_every": 0}
    steps = [
        {"name": "medium", "architecture": {"intermediate_size": 64},
         "distill": {"tokens": 128, "init": "pruned", "train": train}},
        {"name": "small", "target_params": 0.85,
         "search": {"tolerance": 0.1, "max_candidates": 3, "top_k": 0}, "distill": {"tokens": 0}},
    ]
    recipe = write_tiny_recipe(tmp_path, tiny_checkpoint("qwen2"), text_file, steps=steps,
                               correction={"tokens": 128, "lr": 1e-4, "batch_size": 2, "micro_batch_size": 2})
    layout = RunLayout(tmp_path / "run")
    result = run(load_recipe(recipe), layout.root, report=render_report)
    state = read_state(layout)
    assert list(state.stages) == ["correction", "medium/importance", "medium/prune", "medium/distill",
                                  "small/importance", "small/search", "small/prune", "small/distill", "eval"]
    assert state.stages["medium/importance"].teacher == str(layout.correction)
    assert state.stages["small/importance"].teacher == str(layout.step("medium").distilled)
    assert state.stages["correction"].precision in ("bf16", "fp32") and state.stages["correction"].tokens_per_second > 0
    assert not state.stages["medium/distill"].continues_search                # init: pruned
    medium = AutoModelForCausalLM.from_pretrained(layout.step("medium").distilled)
    small = AutoModelForCausalLM.from_pretrained(result.student)
    assert medium.config.intermediate_size == 64
    assert result.student == layout.step("small").pruned          # tokens 0: the prune is the student
    assert state.stages["small/distill"] == DistillRecord(model=str(layout.step("small").pruned), tokens=0,
                                                          seconds=state.stages["small/distill"].seconds)
    assert small.num_parameters() < medium.num_parameters()
    models = [r["model"] for r in result.eval["rows"]]
    assert models == ["teacher", "teacher (corrected)", "medium: pruned", "medium: distilled", "small: pruned"]
    assert result.report is not None and result.report.is_file()
