"""`python -m benchmarks.device.gpu_check --device cpu --tiny`: the GPU check's every stage on a tiny random model."""

from __future__ import annotations

import json

from benchmarks.device import gpu_check


def test_gpu_check_tiny_runs_every_stage_on_cpu(tmp_path, one_thread, monkeypatch):
    from transformers.utils import logging as hf_logging

    monkeypatch.setattr(hf_logging, "disable_progress_bar", lambda: None)   # main() would, for the whole session
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--device", "cpu", "--tiny", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert "errors" not in record
    (model,) = record["models"].values()
    stages = {row["stage"]: row for row in model["stages"]}
    assert list(stages) == ["importance", "search", "prune", "distill", "eval"]
    assert stages["distill"]["tokens"] == 3 * 4 * 64 and stages["distill"]["tokens_per_second"] > 0
    assert set(model["plan"]) == {"importance", "search", "distill", "eval"}
