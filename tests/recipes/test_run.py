"""`compactlm run` end to end on a tiny model: stages, outputs, report, resume, errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from compactlm.cli import main
from compactlm.recipes import load_recipe, run
from compactlm.recipes import pipeline
from compactlm.search import ranking

from run_fixtures import write_tiny_recipe


@pytest.fixture
def tiny_recipe(tmp_path, tiny_checkpoint, text_file):
    return write_tiny_recipe(tmp_path, tiny_checkpoint("llama", initializer_range=0.3), text_file)  # peaky logits


def test_run_end_to_end(tmp_path, tiny_recipe, capsys):
    out = tmp_path / "run"
    assert main(["-q", "run", str(tiny_recipe), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "student:" in printed and "report:" in printed and "heldout_ppl" in printed
    state = json.loads((out / "run_state.json").read_text())
    assert list(state["stages"]) == ["student/importance", "student/search", "student/prune", "student/distill", "eval"]
    # the search table: every candidate has a proxy loss, the top 2 a retrained loss, one is selected
    table = json.loads((out / "student" / "search" / "candidates.json").read_text())
    rows = table["candidates"]
    assert len(rows) >= 2 and all(r["proxy_loss"] > 0 for r in rows)
    assert sum(r["retrained_loss"] is not None for r in rows) == 2 and sum(r["selected"] for r in rows) == 1
    assert (out / "student" / "search" / "candidates.csv").read_text().startswith("name,hidden_size")
    # the student is a plain checkpoint of the chosen architecture
    student = AutoModelForCausalLM.from_pretrained(out / "student" / "distilled")
    winner = table["winner"]
    assert student.config.intermediate_size == winner["intermediate_size"]
    assert student.num_parameters() == winner["params"]
    evaluation = json.loads((out / "eval.json").read_text())
    ppl = {r["model"]: r["metrics"]["heldout_ppl"] for r in evaluation["rows"]}
    assert set(ppl) == {"teacher", "student: pruned", "student: distilled"}
    assert all(v > 1 for v in ppl.values())
    # a random teacher's perplexity means nothing; distillation must bring the student closer to it
    records = [json.loads(line) for line in (out / "student" / "distilled" / "metrics.jsonl").read_text().splitlines()]
    val_kd = [r["val_kd"] for r in records if "val_kd" in r]
    assert len(val_kd) >= 2 and val_kd[-1] < val_kd[0]
    # the report embeds every figure
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 5
    for heading in ("Teacher vs student", "Importance", "Search", "Training", "Settings", "Software"):
        assert heading in report


def test_run_resume_after_crash_matches_uninterrupted(tmp_path, tiny_recipe, monkeypatch):
    recipe = load_recipe(tiny_recipe)
    reference = run(recipe, tmp_path / "reference", report=False)

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
        run(recipe, tmp_path / "crashed", report=False)
    saved = json.loads((tmp_path / "crashed" / "student" / "search" / "search_state.json").read_text())
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
        run(recipe, tmp_path / "crashed", resume=True, report=False)
    state = json.loads((tmp_path / "crashed" / "run_state.json").read_text())
    assert "student/search" in state["stages"] and "student/distill" not in state["stages"]
    monkeypatch.setattr(pipeline, "distill", real_distill)

    resumed = run(recipe, tmp_path / "crashed", resume=True, report=False)
    a = load_file(str(reference.student / "model.safetensors"))
    b = load_file(str(resumed.student / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "crashed" / "student" / "search" / "candidates.json").read_text())["candidates"] == \
        json.loads((tmp_path / "reference" / "student" / "search" / "candidates.json").read_text())["candidates"]


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
    result = run(load_recipe(recipe), tmp_path / "run")
    state = json.loads((tmp_path / "run" / "run_state.json").read_text())
    assert list(state["stages"]) == ["correction", "medium/importance", "medium/prune", "medium/distill",
                                     "small/importance", "small/search", "small/prune", "small/distill", "eval"]
    assert state["stages"]["medium/importance"]["teacher"] == str(tmp_path / "run" / "correction")
    assert state["stages"]["small/importance"]["teacher"] == str(tmp_path / "run" / "medium" / "distilled")
    medium = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "medium" / "distilled")
    small = AutoModelForCausalLM.from_pretrained(result.student)
    assert medium.config.intermediate_size == 64
    assert result.student == tmp_path / "run" / "small" / "pruned"          # tokens 0: the prune is the student
    assert small.num_parameters() < medium.num_parameters()
    models = [r["model"] for r in result.eval["rows"]]
    assert models == ["teacher", "teacher (corrected)", "medium: pruned", "medium: distilled", "small: pruned"]
    assert result.report is not None and result.report.is_file()
