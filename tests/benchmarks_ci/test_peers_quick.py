"""`python -m benchmarks.peers --quick` on a tiny random llama: every arm runs (or says why not), lands in JSON and Markdown."""

from __future__ import annotations

import json

from benchmarks import peers


def test_peers_quick_runs_every_arm(tmp_path, tiny_checkpoint, text_file, one_thread):
    model = tiny_checkpoint("llama")
    out, md = tmp_path / "peers.json", tmp_path / "peers.md"
    common = ["--quick", "--model", str(model), "--data", str(text_file), "--eval-data", str(text_file), "--seq-len", "32",
              "--targets", "0.8", "--curve", "0,128", "--out", str(out), "--markdown", str(md)]
    assert peers.main([*common, "--tasks", "arc_easy,mmlu"]) == 0
    data = json.loads(out.read_text())
    rows = {r["arm"]: r for r in data["rows"]}
    assert set(rows) == {"compactlm", "compactlm-width", "torch-pruning", "torch-pruning-taylor", "llm-pruner",
                         "shortgpt", "random", "slicegpt"}
    assert rows["slicegpt"]["note"].startswith("not run")
    reference = rows["compactlm"]["parameters"]
    for arm, row in rows.items():
        if arm == "slicegpt":
            continue
        assert "failed" not in row["note"], row["note"]
        assert abs(row["parameters"] / reference - 1) < 0.15, (arm, row["parameters"], reference)   # equal budgets
        assert row["tokens"] == rows["compactlm"]["tokens"] > 0                                       # equal tokens
        assert row["after"]["wikitext2_ppl"] > 1 and 0 < row["after"]["distinct_2"] <= 1
        assert "arc_easy acc_norm" in row["after"] and "mmlu acc" in row["after"] and set(row["curve"]) == {"0", "128"}
    text = md.read_text()
    assert "| compactlm |" in text and "Tokens to quality" in text and "margin" in text

    # --append adds a later run's new (target, arm) rows, here the longer curves, and keeps the rest
    assert peers.main([*common, "--tasks", "", "--arms", "shortgpt", "--curve-tokens", "256", "--append"]) == 0
    after = json.loads(out.read_text())
    arms = [r["arm"] for r in after["rows"]]
    assert arms[:len(rows)] == list(rows) and after["rows"][:len(rows)] == data["rows"]
    assert {"compactlm (256 tokens)", "shortgpt (256 tokens)"} <= set(arms)
    long = next(r for r in after["rows"] if r["arm"] == "compactlm (256 tokens)")
    assert "256" in long["curve"] and after["setup"]["tasks"] == "arc_easy,mmlu" and len(after["setup"]["appended"]) == 1
    assert "Added later (`--append`" in md.read_text() and "--curve-tokens 256 --append" in md.read_text()
