"""On a second real teacher, Gemma 3 270M (262K vocabulary, sliding/global layers): its shipped recipe end to end.

The budgets are shrunk by --set overrides as in test_smollm2_run.py; what is checked is what the
random tiny models cannot show: the student reaches ~60% of 268M parameters through hidden-size
pruning, reloads with plain transformers with a `layer_types` that follows the kept layers, generates
the same with and without the KV cache. (Its GGUF export is measured in llama.cpp by
benchmarks/gguf_llamacpp.py, docs/real-teachers.md; the tiny-model export tests cover the gemma3 layout.)
`make test-real` runs this file (CI runs it with the rest of the slow tests).
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import builtin_missing
from transformers import AutoModelForCausalLM

from compactlm.cli import main
from compactlm.prune import PrunePlan
from compactlm.recipes.run_dir import RunLayout

pytestmark = [pytest.mark.slow, pytest.mark.skipif(builtin_missing("gemma3-270m") is not None,
                                                   reason=str(builtin_missing("gemma3-270m")))]

TINY_BUDGETS = [
    "data.seq_len=256", "data.heldout_samples=2", "importance.samples=8", "importance.layer_loss_samples=0",
    "steps.0.search.max_candidates=2", "steps.0.search.top_k=0",
    "steps.0.distill.tokens=2048", "steps.0.distill.train.val_every=0", "steps.0.distill.train.checkpoint_every=0",
    "eval.tasks=[]", "eval.prompts=[]", "export.gguf=[]",
]


def test_gemma_recipe_with_tiny_budgets(tmp_path, capsys):
    out = tmp_path / "run"
    layout = RunLayout(out)
    args = ["-q", "run", "gemma3-270m", "--out", str(out), "--no-report"]
    for item in TINY_BUDGETS:
        args += ["--set", item]
    assert main(args) == 0
    rows = {r["model"]: r for r in json.loads(layout.eval.read_text())["rows"]}
    teacher, pruned, student = rows["teacher"], rows["student: pruned"], rows["student: distilled"]
    assert 0.57 < student["parameters"] / teacher["parameters"] < 0.63
    assert student["architecture"]["hidden_size"] < 640            # the embedding is 63%: only hidden reaches 60%
    assert student["metrics"]["heldout_ppl"] < pruned["metrics"]["heldout_ppl"]      # measured: 66K vs 1.4M

    path = out / "student" / "distilled"
    plan = PrunePlan.load(path)
    reloaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    teacher_kinds = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(18)]
    assert reloaded.config.layer_types == [teacher_kinds[i] for i in plan.layers]
    prompt = torch.tensor([[2, 818, 5279, 529, 7001, 563]])         # "<bos>The capital of France is"
    cached = reloaded.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    uncached = reloaded.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
