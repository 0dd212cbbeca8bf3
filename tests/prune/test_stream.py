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
                        channels=torch.rand(src.hidden_size, generator=g),
                        experts=torch.rand(L, src.num_experts, generator=g),
                        expert_neurons=torch.rand(L, src.num_experts, src.moe_intermediate_size, generator=g),
                        shared_neurons=torch.rand(L, src.shared_expert_intermediate_size, generator=g))


PRUNE_ALL = dict(hidden_size=48, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
                 num_hidden_layers=3)
# MoE: no dense MLP; experts and their widths instead (hidden 32 = 2 heads x 16 keeps OLMoE's constraint)
PRUNE_ALL_MOE = dict(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=3,
                     num_experts=3, moe_intermediate_size=16)


def prune_all(config) -> dict:
    """Sizes that prune every axis the family has."""
    arch = adapter_for(config).architecture(config)
    if not arch.is_moe:
        return PRUNE_ALL
    return PRUNE_ALL_MOE | ({"shared_expert_intermediate_size": 24} if arch.shared_expert_intermediate_size else {})


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
    plan = plan_for(model.config, **prune_all(model.config))
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


MB = 2**20


def big_checkpoint(path: Path, shard_mb: int) -> tuple[int, int]:
    """A ~200 MB float32 Llama (3 layers, hidden 1024, MLP 2816, vocab 8192) in ~40 MB shards; values are dummies.

    Returns the bytes of the model and of its largest tensor.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("llama", vocab_size=8192, hidden_size=1024, intermediate_size=2816,
                                  num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=4, head_dim=128,
                                  tie_word_embeddings=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.fill_(0.01 * (i + 1))
    model.save_pretrained(path, max_shard_size=f"{shard_mb}MB")
    sizes = [p.numel() * p.element_size() for p in model.parameters()]
    plan_for(model.config, hidden_size=768, intermediate_size=2048, num_attention_heads=6, num_key_value_heads=3,
             num_hidden_layers=2).save(path.parent / "plan.json")
    return sum(sizes), max(sizes)


def peak_extra_mb(src: Path, out: Path, shard_mb: int, warm: Path) -> dict[str, float]:
    """{"stream": MB, "memory": MB}: each way's peak RSS above its baseline, measured by rss_probe.py."""
    import subprocess
    import sys

    probe = Path(__file__).with_name("rss_probe.py")
    run = subprocess.run([sys.executable, str(probe), str(src), str(src.parent / "plan.json"), str(out),
                          f"{shard_mb}MB", str(warm), str(warm.parent / "warm_plan.json")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return {k: v / 1024 for k, v in json.loads(run.stdout.strip().splitlines()[-1]).items()}


def test_stream_memory_is_bounded_by_a_shard(tmp_path):
    """Streaming needs about one output shard + one source tensor; in memory it needs the whole model (and more).

    Measured in a subprocess as the peak RSS (VmHWM, reset before each way) above the RSS after a warm-up run.
    """
    import time

    start = time.perf_counter()
    shard_mb = 40
    src = tmp_path / "big"
    model_bytes, largest_tensor = big_checkpoint(src, shard_mb)
    if time.perf_counter() - start > 15:
        pytest.skip("building the 200 MB checkpoint took over 15 s on this machine")
    warm = sharded_checkpoint(tmp_path / "warm" / "src", "llama")
    plan_for(load_model(str(warm), with_tokenizer=False).config, **PRUNE_ALL).save(warm.parent / "warm_plan.json")

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
    extra = peak_extra_mb(src, tmp_path / "out", shard_mb, warm)
    streamed, in_memory = extra["stream"], extra["memory"]
    margin = 24  # MB: allocator slack, index tensors, the safetensors headers
    print(f"model {model_bytes / MB:.0f} MB, shards {shard_mb} MB, largest tensor {largest_tensor / MB:.0f} MB: "
          f"extra peak RSS streamed {streamed:.0f} MB, in memory {in_memory:.0f} MB")
    assert streamed < shard_mb + largest_tensor / MB + margin
    assert in_memory > model_bytes / MB
