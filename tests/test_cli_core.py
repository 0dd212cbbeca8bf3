"""The CLI end to end on tiny checkpoints, and every user mistake: one line, exit 2, nothing written."""

from __future__ import annotations

import json

import pytest
import torch

from compactlm.cli import main


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["-q", *(str(a) for a in argv)])
    out, err = capsys.readouterr()
    return code, out, err


def importance(capsys, model, text, out, *extra):
    return run_cli(capsys, "importance", "--model", model, "--data", text, "--samples", 4, "--seq-len", 32,
                   "--batch-size", 2, "--layer-loss-samples", 2, "--out", out, *extra)


@pytest.fixture
def scored(tiny_checkpoint, text_file, tmp_path, capsys):
    model = tiny_checkpoint("qwen2")
    code, _, err = importance(capsys, model, text_file, tmp_path / "scores")
    assert code == 0, err
    return model, tmp_path / "scores"


def test_importance_prune_info_roundtrip(scored, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    model, scores = scored
    code, out, err = run_cli(capsys, "prune", "--model", model, "--scores", scores, "--hidden-size", 48,
                             "--intermediate-size", 64, "--num-attention-heads", 2, "--num-hidden-layers", 3,
                             "--depth-metric", "loss", "--out", tmp_path / "student")
    assert code == 0, err
    assert "parameters" in out
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert (student.config.hidden_size, student.config.num_hidden_layers) == (48, 3)
    plan = json.loads((tmp_path / "student" / "prune_plan.json").read_text())
    assert plan["criteria"]["depth_metric"] == "loss" and len(plan["kept"]["layers"]) == 3
    assert (tmp_path / "student" / "tokenizer.json").is_file()
    # the plan replays to the same weights
    code, _, err = run_cli(capsys, "prune", "--model", model, "--plan", tmp_path / "student" / "prune_plan.json",
                           "--out", tmp_path / "replay")
    assert code == 0, err
    replay = AutoModelForCausalLM.from_pretrained(tmp_path / "replay")
    for (k, v), (_, w) in zip(student.state_dict().items(), replay.state_dict().items()):
        assert torch.equal(v, w), k
    code, out, _ = run_cli(capsys, "info", tmp_path / "student", "--json")
    info = json.loads(out)
    assert code == 0 and info["parameters"]["total"] == sum(p.numel() for p in student.parameters())
    assert set(info["parameters"]) == {"embeddings", "attention", "mlp", "norms", "total"}


def assert_user_error(code, out, err, *needles, not_written=None):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("compactlm "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    if not_written is not None:
        assert not not_written.exists()
        assert not [p for p in not_written.parent.iterdir() if p.name.startswith(f".{not_written.name}")]


def test_unknown_model_path(text_file, tmp_path, capsys):
    out = tmp_path / "s"
    assert_user_error(*importance(capsys, "./no/such/model", text_file, out), "./no/such/model", not_written=out)


def test_unsupported_architecture(tmp_path, text_file, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, bos_token_id=0,
                               eos_token_id=0)).save_pretrained(tmp_path / "gpt2")
    out = tmp_path / "s"
    assert_user_error(*importance(capsys, tmp_path / "gpt2", text_file, out), "model_type='gpt2'",
                      "gemma2, gemma3_text, granite, llama, mistral, mixtral, nemotron, olmo2, olmoe, phi3, qwen2, qwen2_moe",
                      not_written=out)


@pytest.mark.parametrize("flags,needle", [
    (["--intermediate-size", 1000], "larger than the source"),
    (["--num-hidden-layers", 0], "--num-hidden-layers 0: expected greater than or equal to 1"),
    (["--hidden-size", -4], "--hidden-size -4: expected greater than or equal to 1"),
    (["--num-hidden-layers", 9], "larger than the source"),
    (["--num-attention-heads", 3], "not a multiple of the 2 KV groups"),
    (["--num-key-value-heads", 1, "--num-attention-heads", 4], "needs 4 heads per group"),
    (["--depth-metric", "bii", "--num-hidden-layers", 2], "Did you mean 'bi'"),
    (["--aggregation", "l2,max"], "Unknown aggregation 'max'"),
])
def test_bad_prune_targets(scored, tmp_path, capsys, flags, needle):
    model, scores = scored
    out = tmp_path / "student"
    assert_user_error(*run_cli(capsys, "prune", "--model", model, "--scores", scores, *flags, "--out", out), needle,
                      not_written=out)


def test_scores_from_another_model(scored, tiny_checkpoint, tmp_path, capsys):
    _, scores = scored
    other = tiny_checkpoint("qwen2", name="other", seed=11)
    out = tmp_path / "student"
    assert_user_error(*run_cli(capsys, "prune", "--model", other, "--scores", scores, "--intermediate-size", 64, "--out", out),
                      "fingerprint", not_written=out)


def test_scores_dir_missing(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "student"
    assert_user_error(*run_cli(capsys, "prune", "--model", tiny_checkpoint(), "--scores", tmp_path / "nope", "--out", out),
                      "not an importance-scores directory", not_written=out)


def test_empty_and_unreadable_data(tiny_checkpoint, tmp_path, capsys):
    model = tiny_checkpoint()
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 50)
    out = tmp_path / "s"
    assert_user_error(*importance(capsys, model, empty, out), "no text", not_written=out)
    assert_user_error(*importance(capsys, model, binary, out), "bin.txt", not_written=out)
    assert_user_error(*importance(capsys, model, tmp_path / "missing.txt", out), "does not exist", not_written=out)


def test_too_little_text(tiny_checkpoint, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    out = tmp_path / "s"
    assert_user_error(*importance(capsys, tiny_checkpoint(), short, out), "--samples", not_written=out)


def test_existing_output_is_refused_then_overwritten(scored, text_file, capsys):
    model, scores = scored
    before = (scores / "importance.json").read_text()
    assert_user_error(*importance(capsys, model, text_file, scores), "--overwrite")
    assert (scores / "importance.json").read_text() == before
    code, _, err = importance(capsys, model, text_file, scores, "--overwrite")
    assert code == 0, err
