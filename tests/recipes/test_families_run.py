"""The whole ``compactlm run`` pipeline on a tiny random model of every family (Llama: test_run.py)."""

from __future__ import annotations

import json

import pytest
from helpers import FAMILIES, MOE_FAMILIES
from run_fixtures import read_state, write_tiny_recipe
from transformers import AutoModelForCausalLM

from compactlm.arch import adapter_for
from compactlm.cli import main
from compactlm.recipes.run_dir import RunLayout

OTHER_FAMILIES = sorted(f for f in FAMILIES if f not in ("llama", "llama_bias_untied", "mistral", "qwen2", "qwen3"))


@pytest.mark.parametrize("family", OTHER_FAMILIES)
def test_run_end_to_end_per_family(family, tmp_path, tiny_checkpoint, text_file, capsys):
    recipe = write_tiny_recipe(tmp_path, tiny_checkpoint(family), text_file, importance={
        "samples": 8, "batch_size": 4, "layer_loss_samples": 0})
    out = tmp_path / "run"
    assert main(["-q", "run", str(recipe), "--out", str(out)]) == 0
    layout = RunLayout(out)
    step = layout.step("student")
    state = read_state(layout)
    assert list(state.stages) == ["student/importance", "student/search", "student/prune", "student/distill", "eval"]
    winner = json.loads(step.search.candidates_json.read_text())["winner"]
    # a stock checkpoint of the searched architecture, loaded with no compactlm code
    student = AutoModelForCausalLM.from_pretrained(step.distilled)
    arch = adapter_for(student.config).architecture(student.config)
    assert student.config.model_type == FAMILIES[family]["model_type"]
    assert student.num_parameters() == winner["params"] and arch.num_hidden_layers == winner["num_hidden_layers"]
    evaluation = json.loads(layout.eval.read_text())
    assert {r["model"] for r in evaluation["rows"]} == {"teacher", "student: pruned", "student: distilled"}
    assert all(r["metrics"]["heldout_ppl"] > 1 for r in evaluation["rows"])
    report = layout.report.read_text()
    if family in MOE_FAMILIES:
        assert arch.num_experts == winner["num_experts"] and "active_params" in winner
        assert "<h3>Routing</h3>" in report and "experts kept" in report
    else:
        assert arch.intermediate_size == winner["intermediate_size"]
