"""`compactlm search` on a tiny model: the table, the winner, resume, the empty-space error."""

from __future__ import annotations

import csv
import json

from compactlm.cli import main
from compactlm.search.search_dir import SearchLayout


def _importance(tmp_path, model, text):
    scores = tmp_path / "scores"
    assert main(["-q", "importance", "--model", str(model), "--data", str(text), "--samples", "8", "--seq-len", "32",
                 "--out", str(scores)]) == 0
    return scores


def test_search_cli(tmp_path, tiny_checkpoint, text_file, capsys):
    model = tiny_checkpoint("qwen3")
    scores = _importance(tmp_path, model, text_file)
    out = tmp_path / "search"
    args = ["-q", "search", "--model", str(model), "--scores", str(scores), "--target-params", "0.7",
            "--tolerance", "0.1", "--data", str(text_file), "--seq-len", "32", "--heldout-samples", "4",
            "--top-k", "2", "--distill-tokens", "128", "--batch-size", "2", "--micro-batch-size", "2",
            "--precision", "fp32", "--num-hidden-layers", "4,3", "--intermediate-size", "96,80,64,48,32",
            "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "<- selected" in printed and "compactlm prune --model" in printed
    layout = SearchLayout(out)
    rows = list(csv.DictReader(layout.candidates_csv.open()))
    assert len(rows) >= 2 and sum(r["selected"] == "True" for r in rows) == 1
    first = json.loads(layout.candidates_json.read_text())
    retrained = [r for r in first["candidates"] if r["retrained_loss"] is not None]
    assert len(retrained) == 2   # --top-k 2
    assert all((layout.retrained(r["name"]) / "config.json").is_file() for r in retrained)
    # resuming a finished search recomputes nothing and gives the same table
    assert main(args + ["--resume"]) == 0
    assert json.loads(layout.candidates_json.read_text())["candidates"] == first["candidates"]
    assert main(args) == 2                                  # exists: --resume or --overwrite


def test_search_with_no_candidate_is_a_clear_error(tmp_path, tiny_checkpoint, text_file, capsys):
    model = tiny_checkpoint("llama")
    scores = _importance(tmp_path, model, text_file)
    code = main(["-q", "search", "--model", str(model), "--scores", str(scores), "--target-params", "0.5",
                 "--tolerance", "0.01", "--intermediate-size", "96,88", "--data", str(text_file), "--seq-len", "32",
                 "--out", str(tmp_path / "s")])
    assert code == 2
    err = capsys.readouterr().err
    assert "No architecture" in err and "Nearest:" in err
    assert not SearchLayout(tmp_path / "s").candidates_csv.exists()
