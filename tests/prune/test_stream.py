"""Streamed pruning (``prune --stream``) writes exactly what in-memory pruning writes, one shard at a time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import make_char_tokenizer, make_tiny_model
from safetensors.torch import load_file

from compactlm.arch import adapter_for
from compactlm.cli import main
from compactlm.errors import CompactLMError
from compactlm.export import save_student
from compactlm.models import load_model
from compactlm.prune import PrunePlan, apply_plan, prune_checkpoint, select_units
from compactlm.prune.stream import INDEX_FILE, parse_size


def sharded_checkpoint(path: Path, family: str, shard: str = "20KB", **overrides) -> Path:
    model = make_tiny_model(family, dtype=torch.float32, **overrides)
    model.save_pretrained(path, max_shard_size=shard)
    make_char_tokenizer().save_pretrained(path)
    assert (path / INDEX_FILE).is_file()   # several source shards
    return path


def plan_for(config, seed=0, **sizes) -> PrunePlan:
    """Random scores -> a plan that prunes every axis (hidden, heads, groups, MLP, depth)."""
    g = torch.Generator().manual_seed(seed)
    src = adapter_for(config).architecture(config)
    target = src.replace(**sizes)
    L = src.num_hidden_layers
    layers = sorted(torch.randperm(L, generator=g)[: target.num_hidden_layers].tolist())
    return select_units(src, target, layers=layers, neurons=torch.rand(L, src.intermediate_size, generator=g),
                        heads=torch.rand(L, src.num_attention_heads, generator=g),
                        channels=torch.rand(src.hidden_size, generator=g))


PRUNE_ALL = dict(hidden_size=48, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
                 num_hidden_layers=3)


def tensors_of(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def assert_same_checkpoint(a: Path, b: Path) -> None:
    ta, tb = tensors_of(a), tensors_of(b)
    assert sorted(ta) == sorted(tb)
    for key in ta:
        assert ta[key].dtype == tb[key].dtype and torch.equal(ta[key], tb[key]), key
    for name in ("config.json", "generation_config.json"):
        assert json.loads((a / name).read_text()) == json.loads((b / name).read_text()), name
    assert PrunePlan.load(a).to_dict() == PrunePlan.load(b).to_dict()


def test_streamed_equals_in_memory(family, tmp_path):
    src = sharded_checkpoint(tmp_path / "src", family)
    model, tokenizer = load_model(str(src))
    plan = plan_for(model.config, **PRUNE_ALL)
    save_student(apply_plan(model, plan), tokenizer, tmp_path / "memory", plan=plan)
    result = prune_checkpoint(src, plan, tmp_path / "stream", max_shard_size="30KB")
    assert result.shards > 1 and (tmp_path / "stream" / INDEX_FILE).is_file()
    assert_same_checkpoint(tmp_path / "memory", tmp_path / "stream")
    index = json.loads((tmp_path / "stream" / INDEX_FILE).read_text())
    assert index["metadata"]["total_parameters"] == result.student_parameters
    provenance = json.loads((tmp_path / "stream" / "compactlm_provenance.json").read_text())
    assert provenance["streamed"] and provenance["parameters"]["student"] == result.student_parameters
    assert (tmp_path / "stream" / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    # The streamed student is a plain checkpoint: it loads strictly and gives the in-memory student's logits.
    reloaded, _ = load_model(str(tmp_path / "stream"))
    expected, _ = load_model(str(tmp_path / "memory"))
    ids = torch.randint(3, 128, (2, 10), generator=torch.Generator().manual_seed(1))
    assert torch.equal(reloaded(ids).logits, expected(ids).logits)


def test_streamed_keep_everything_in_one_shard_and_bf16(tmp_path):
    src = sharded_checkpoint(tmp_path / "src", "qwen3")
    model, tokenizer = load_model(str(src), dtype="bfloat16")
    plan = plan_for(model.config, seed=3, num_hidden_layers=2)
    save_student(apply_plan(model, plan), tokenizer, tmp_path / "memory", plan=plan)
    result = prune_checkpoint(src, plan, tmp_path / "stream", dtype=torch.bfloat16)
    assert result.shards == 1 and not (tmp_path / "stream" / INDEX_FILE).exists()
    assert_same_checkpoint(tmp_path / "memory", tmp_path / "stream")


def test_stream_refuses_a_plan_of_another_model_and_leaves_nothing(tmp_path):
    src = sharded_checkpoint(tmp_path / "src", "llama")
    other = make_tiny_model("llama", hidden_size=32, head_dim=8)
    plan = plan_for(other.config, hidden_size=16)
    with pytest.raises(CompactLMError, match="prune plan was made for"):
        prune_checkpoint(src, plan, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9 and parse_size("40MiB") == 40 * 2**20 and parse_size(123) == 123
    with pytest.raises(CompactLMError, match="not a size"):
        parse_size("lots")


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(["-q", *(str(a) for a in argv)])
    return code, capsys.readouterr().err


def test_cli_stream_from_scores_matches_in_memory(tmp_path, text_file, capsys):
    src = sharded_checkpoint(tmp_path / "src", "llama_bias_untied")
    code, err = run_cli(capsys, "importance", "--model", src, "--data", text_file, "--samples", 4, "--seq-len", 16,
                        "--layer-loss-samples", 0, "--out", tmp_path / "scores")
    assert code == 0, err
    sizes = ["--hidden-size", 48, "--intermediate-size", 64, "--num-hidden-layers", 3]
    prune = ["prune", "--model", src, "--scores", tmp_path / "scores", *sizes]
    assert run_cli(capsys, *prune, "--out", tmp_path / "memory")[0] == 0
    code, err = run_cli(capsys, *prune, "--stream", "--max-shard-size", "25KB", "--out", tmp_path / "stream")
    assert code == 0, err
    assert_same_checkpoint(tmp_path / "memory", tmp_path / "stream")
    # scores of another checkpoint are refused before anything is written
    other = sharded_checkpoint(tmp_path / "other", "llama_bias_untied", seed=5)
    code, err = run_cli(capsys, "prune", "--model", other, "--scores", tmp_path / "scores", *sizes, "--stream",
                        "--out", tmp_path / "bad")
    assert code == 2 and "Recompute them" in err and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("model, flags, message", [
    ("org/name", ["--stream"], "hf download org/name --local-dir DIR"),
    ("model.gguf", ["--stream"], "not GGUF"),
    ("SRC", ["--max-shard-size", "1MB"], "add --stream"),
    ("PICKLE", ["--stream"], "has neither model.safetensors"),
])
def test_cli_stream_refusals(tmp_path, capsys, model, flags, message):
    src = sharded_checkpoint(tmp_path / "src", "llama")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    pickle_dir = tmp_path / "pickle"
    pickle_dir.mkdir()
    (pickle_dir / "config.json").write_text((src / "config.json").read_text())
    (pickle_dir / "pytorch_model.bin").write_bytes(b"")
    model = {"SRC": src, "PICKLE": pickle_dir, "model.gguf": tmp_path / "model.gguf"}.get(model, model)
    plan_for(load_model(str(src), with_tokenizer=False).config, hidden_size=32).save(tmp_path / "plan.json")
    code, err = run_cli(capsys, "prune", "--model", model, "--plan", tmp_path / "plan.json", *flags,
                        "--out", tmp_path / "out")
    assert code == 2 and message in err and "\n" not in err.strip(), err
    assert not (tmp_path / "out").exists()
