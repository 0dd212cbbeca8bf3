"""`compactlm importance --criterion/--depth-tasks` and `compactlm prune --depth-metric task:NAME` end to end."""

from __future__ import annotations

import json

from compactlm.cli import main

ROW = {"sentence": "Ann gave the ball to _ after a day.", "option1": "Bob", "option2": "Cy", "answer": "1"}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["-q", *(str(a) for a in argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_criterion_and_task_depth_metric_reach_the_plan(tiny_checkpoint, text_file, tmp_path, capsys):
    model = tiny_checkpoint("llama")
    (tmp_path / "tasks" / "winogrande").mkdir(parents=True)
    (tmp_path / "tasks" / "winogrande" / "validation.jsonl").write_text((json.dumps(ROW) + "\n") * 3)
    code, _, err = run_cli(capsys, "importance", "--model", model, "--data", text_file, "--samples", 4, "--seq-len", 16,
                           "--layer-loss-samples", 0, "--criterion", "magnitude", "--depth-tasks", "winogrande",
                           "--depth-task-examples", 3, "--depth-task-lengths", "1,2", "--data-dir", tmp_path / "tasks",
                           "--out", tmp_path / "scores")
    assert code == 0, err
    meta = json.loads((tmp_path / "scores" / "importance.json").read_text())
    assert meta["criterion"] == "magnitude" and meta["depth_tasks"]["winogrande"]["lengths"] == [1, 2]

    prune = ["prune", "--model", model, "--scores", tmp_path / "scores", "--num-hidden-layers", 2]
    code, _, err = run_cli(capsys, *prune, "--depth-metric", "task:winogrande", "--intermediate-size", 64,
                           "--out", tmp_path / "student")
    assert code == 0, err
    plan = json.loads((tmp_path / "student" / "prune_plan.json").read_text())
    assert plan["criteria"]["criterion"] == "magnitude" and plan["criteria"]["depth_metric"] == "task:winogrande"
    assert len(plan["kept"]["layers"]) == 2

    code, _, err = run_cli(capsys, *prune, "--depth-metric", "task:hellaswag", "--out", tmp_path / "other")
    assert code == 2 and "--depth-tasks hellaswag" in err and "\n" not in err.strip()
    assert not (tmp_path / "other").exists()


def test_unknown_criterion_is_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, "importance", "--criterion", "taylr", "--out", tmp_path / "s")
    assert code == 2 and "Unknown criterion 'taylr'. Did you mean 'taylor'?" in err
