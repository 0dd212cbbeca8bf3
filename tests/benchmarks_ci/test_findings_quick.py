"""`python -m benchmarks.findings --quick` on a tiny random llama: every experiment runs and lands in the JSON and Markdown."""

from __future__ import annotations

import json

import pytest

from benchmarks import findings
from compactlm.errors import CompactLMError

EXPERIMENTS = ("aggregation", "criteria", "axes", "depth", "losses", "intermediate", "ranking", "scratch")


def test_findings_quick_runs_every_experiment(tmp_path, tiny_checkpoint, text_file, one_thread, capsys):
    model = tiny_checkpoint("llama")
    out, md = tmp_path / "findings.json", tmp_path / "findings.md"
    common = ["--quick", "--model", str(model), "--data", str(text_file), "--eval-data", str(text_file),
              "--seq-len", "32", "--out", str(out), "--markdown", str(md)]
    assert findings.main([*common, "--experiments", ",".join(EXPERIMENTS)]) == 0
    printed = capsys.readouterr().out

    data = json.loads(out.read_text())
    assert list(data["experiments"]) == list(EXPERIMENTS)
    text = md.read_text()
    for name in EXPERIMENTS:
        entry = data["experiments"][name]
        assert entry["rows"], name
        assert entry["verdict"].startswith("paper claim held here: "), entry["verdict"]
        assert entry["tokens_per_arm"] == 2 * 2 * 32 and entry["seeds"]["train"] == 0
        for row in entry["rows"]:
            assert row["experiment"] == name and row["parameters"] > 0
            assert row["loss_before"] is not None or row["loss_after"] is not None
        assert f". {name}\n" in text and entry["verdict"] in text
        assert f"| {entry['rows'][0]['arm']} |" in text
        assert f"== {name}:" in printed
    assert len(data["experiments"]["aggregation"]["rows"]) == 18          # nine aggregations x two width targets
    assert {r["criterion"] for r in data["experiments"]["criteria"]["rows"]} == {"activation", "random", "magnitude", "taylor"}
    assert all(r["loss_after"] is not None for n in EXPERIMENTS[1:] for r in data["experiments"][n]["rows"])
    axes = data["experiments"]["axes"]["rows"]
    assert all(abs(r["parameters"] / axes[1]["parameters"] - 1) < 0.2 for r in axes)   # about the same size
    assert "1.00" in data["experiments"]["ranking"]["verdict"] or "+1.00" in data["experiments"]["ranking"]["verdict"]

    # re-running one experiment replaces only its entry; two seeds give every arm's mean ± std and both verdicts
    before = data["experiments"]
    assert findings.main([*common, "--experiments", "depth", "--seeds", "1,2"]) == 0
    after = json.loads(out.read_text())["experiments"]
    assert list(after) == list(EXPERIMENTS) and after["depth"]["seeds"]["train"] == 1
    assert all(after[n] == before[n] for n in EXPERIMENTS if n != "depth")
    depth = after["depth"]
    assert depth["seeds_run"] == [1, 2] and [e["seed"] for e in depth["per_seed"]] == [1, 2]
    assert "of 2 seeds" in depth["verdict"] and "seed 1:" in depth["verdict"] and "seed 2:" in depth["verdict"]
    for i, row in enumerate(depth["rows"]):
        losses = [e["rows"][i]["loss_after"] for e in depth["per_seed"]]
        assert row["loss_after"] == sum(losses) / 2 and row["loss_after_std"] >= 0
    assert " ± " in md.read_text() and "seeds [1, 2], mean ± std" in md.read_text()

    with pytest.raises(CompactLMError, match="Did you mean 'aggregation'"):   # run_script: one line, exit code 2
        findings.main([*common, "--experiments", "agregation"])
