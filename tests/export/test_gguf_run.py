"""`compactlm run` with `export: {gguf: [...]}`: the files, their eval rows, the report, the printout."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from gguf_fixtures import VOCAB, save_bpe_tokenizer
from helpers import make_tiny_model

from compactlm.cli import main

pytest.importorskip("gguf")


def _recipe(tmp_path, text_file, **teacher_overrides):
    teacher = tmp_path / "teacher"
    make_tiny_model("llama", dtype=torch.float32, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2,
                    initializer_range=0.3, **teacher_overrides).save_pretrained(teacher)
    save_bpe_tokenizer(teacher)
    recipe = {
        "teacher": str(teacher),
        "data": {"source": str(text_file), "seq_len": 32, "heldout_samples": 4},
        "importance": {"samples": 8, "batch_size": 4, "layer_loss_samples": 0},
        "steps": [{"name": "student", "architecture": {"intermediate_size": 64},
                   "distill": {"tokens": 256, "train": {"batch_size": 2, "micro_batch_size": 2, "precision": "fp32",
                                                        "val_every": 4, "checkpoint_every": 4}}}],
        "eval": {"tasks": [], "batch_size": 4},
        "export": {"gguf": ["f32", "q8_0"], "tokenizer_pre": "default"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_run_exports_and_scores_gguf(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    assert main(["-q", "run", str(_recipe(tmp_path, text_file)), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"gguf:    {out / 'student.q8_0.gguf'}" in printed
    state = json.loads((out / "run_state.json").read_text())
    assert list(state["stages"])[-2:] == ["export", "eval"]
    files = {f["quant"]: f for f in state["stages"]["export"]["files"]}
    assert set(files) == {"f32", "q8_0"} and files["q8_0"]["bytes"] < files["f32"]["bytes"]
    assert all((out / f"student.{q}.gguf").is_file() for q in files)
    ppl = {r["model"]: r["metrics"]["heldout_ppl"] for r in json.loads((out / "eval.json").read_text())["rows"]}
    student = ppl["student: distilled"]
    assert ppl["student: GGUF f32"] == pytest.approx(student, rel=1e-5)     # the same network, read back
    assert ppl["student: GGUF q8_0"] == pytest.approx(student, rel=0.05)
    report = (out / "report.html").read_text()
    assert "Deployment: GGUF files" in report and "student.q8_0.gguf" in report


def test_gguf_the_loader_misreads_is_not_scored(tmp_path, text_file, capsys):
    """transformers' GGUF loader drops Llama biases; such a row would score another network, so it is skipped
    (seen in the file, before loading it)."""
    out = tmp_path / "run"
    assert main(["run", str(_recipe(tmp_path, text_file, attention_bias=True)), "--out", str(out),
                 "--no-report"]) == 0
    models = [r["model"] for r in json.loads((out / "eval.json").read_text())["rows"]]
    assert models == ["teacher", "student: pruned", "student: distilled"]
    assert "written as llama arch with biases, which transformers' GGUF loader cannot read" in capsys.readouterr().err
    assert (out / "student.q8_0.gguf").is_file()


def test_recipe_refuses_an_unknown_gguf_type(tmp_path, text_file, capsys):
    recipe = _recipe(tmp_path, text_file)
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "--set", "export.gguf=[q8_0,q4_k]"]) == 2
    assert "export.gguf has q4_k" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
