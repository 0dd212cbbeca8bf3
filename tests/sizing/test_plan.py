"""compactlm plan: exact counts of the paper configs, the memory arithmetic, refusal and acceptance."""

from __future__ import annotations

import json

import pytest

from compactlm.arch.params import ParamLayout
from compactlm.cli import main
from compactlm.errors import CompactLMError
from compactlm.recipes import load_recipe
from compactlm.sizing import (
    STRATEGIES,
    DeviceSpec,
    ModelShape,
    Strategy,
    Workload,
    build_plan,
    cheapest_fitting,
    check_fits,
    load_config,
    meta_model,
    model_shape,
    parse_memory,
    stage_memory,
)
from compactlm.sizing.memory import GiB
from compactlm.sizing.source import CONFIGS, missing_fields


def test_llama_31_8b_count_is_exact_and_equals_the_meta_skeleton():
    config = load_config("meta-llama/Llama-3.1-8B")
    assert model_shape(config).params == 8_030_261_248
    assert sum(p.numel() for p in meta_model(config).parameters()) == 8_030_261_248
    assert config.rope_scaling["rope_type"] == "llama3" and config.max_position_embeddings == 131072


def test_mistral_nemo_count():
    assert model_shape(load_config("mistralai/Mistral-Nemo-Base-2407")).params == 12_247_782_400


def _shapes():
    teacher = model_shape(load_config(str(CONFIGS / "llama-3.1-8b.json")))
    student = ModelShape(teacher.arch.replace(hidden_size=3072, intermediate_size=9216), ParamLayout())
    return teacher, student


@pytest.mark.parametrize("teacher_placement", ["replicate", "offload"])
def test_fsdp_is_ddp_with_states_divided_by_n_plus_one_unit(teacher_placement):
    teacher, student = _shapes()
    work, n = Workload(micro_batch=1, seq_len=4096, precision="bf16", teacher_dtype="bf16"), 8
    ddp = stage_memory("distillation", teacher, student, work, Strategy("d", "ddp", teacher_placement), n)
    fsdp = stage_memory("distillation", teacher, student, work, Strategy("f", "fsdp", teacher_placement), n)
    states = ("weights", "autocast", "gradients", "optimizer")
    assert ddp.terms["weights"] == 4 * student.params and ddp.terms["optimizer"] == 8 * student.params
    for key in states:
        assert fsdp.terms[key] == -(-ddp.terms[key] // n)
    assert fsdp.terms["fsdp_unit"] == 4 * student.largest_unit
    assert fsdp.total == (ddp.total - ddp.terms["ddp_buckets"] - sum(ddp.terms[k] for k in states)
                          + sum(fsdp.terms[k] for k in states) + 4 * student.largest_unit)


def test_teacher_placement_replicated_sharded_offloaded():
    teacher, student = _shapes()
    work = Workload(micro_batch=1, seq_len=16, teacher_dtype="bf16")
    rows = {name: stage_memory("distillation", teacher, student, work, STRATEGIES[name], 4).terms["teacher"]
            for name in ("ddp", "fsdp", "offload")}
    live = rows["offload"]                     # one layer's live tensors only
    assert rows["ddp"] - live == 2 * teacher.params
    assert rows["fsdp"] - live == -(-2 * teacher.params // 4) + 2 * teacher.largest_unit


def test_cheapest_fitting_goes_single_then_offload_and_refusal_names_it():
    teacher, student = _shapes()
    work = Workload(micro_batch=1, seq_len=512, precision="bf16", dtype="bfloat16", teacher_dtype="bf16",
                    importance_batch=1, proxy_batch=1, eval_batch=1, eval_window=512, device_type="cuda")
    roomy = build_plan(teacher, student, work, DeviceSpec("big", "cuda", 1000 * GiB))
    assert cheapest_fitting(roomy).name == "single"
    single = roomy.row("distillation", "single").total
    offload = roomy.row("distillation", "offload").total
    assert offload < single
    tight = build_plan(teacher, student, work, DeviceSpec("tight", "cuda", (single + offload) // 2))
    assert cheapest_fitting(tight, "distillation").name == "offload"
    train = type("T", (), {"strategy": "auto", "teacher_placement": "shard"})()
    with pytest.raises(CompactLMError, match="cheapest strategy that fits is 'offload'"):
        check_fits(tight, train, "x", stages=("distillation",))     # one process trains the plain model: refused
    two = build_plan(teacher, student, work, DeviceSpec("tight", "cuda", (single + offload) // 2, count=2))
    assert cheapest_fitting(two, "distillation").name == "fsdp"
    check_fits(two, train, "x", stages=("distillation",))           # strategy auto on two devices: fsdp fits


def test_parse_memory():
    assert parse_memory("80GB") == 80 * 1000 ** 3
    assert parse_memory("80GiB") == parse_memory("80G") == 80 * GiB
    with pytest.raises(CompactLMError, match="expected a size"):
        parse_memory("lots")


def test_plan_verb_for_the_paper_recipe_offline(capsys):
    assert main(["plan", "--recipe", "llama31-8b-to-4b", "--device", "H100", "--devices", "8"]) == 0
    out = capsys.readouterr().out
    assert "8,030,261,248 parameters" in out and "h3072-f9216-a32-kv8-l32" in out     # the paper's width student
    assert "h4096-f14336-a32-kv8-l16" in out                                           # and its depth student
    assert "cheapest strategy that fits every stage: fsdp" in out


def test_plan_verb_for_a_config_json_and_a_budget(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads((CONFIGS / "mistral-nemo-12b.json").read_text())}))
    assert main(["plan", "--model", str(path), "--target-params", "8B", "--device", "A100", "--devices", "4",
                 "--seq-len", "2048", "--micro-batch-size", "1", "--show", "3"]) == 0
    assert "12,247,782,400 parameters" in capsys.readouterr().out


@pytest.mark.parametrize("model_type, raw, missing", [
    ("llama", {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 99}, ["intermediate_size"]),
    # Mixtral's expert width is intermediate_size and its expert count num_local_experts
    ("mixtral", {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 99,
                 "intermediate_size": 32, "num_local_experts": 4}, ["num_experts_per_tok"]),
    # attribute_map aliases both ways: OLMoE's num_experts is also spelled num_local_experts
    ("olmoe", {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 99,
               "intermediate_size": 32, "num_local_experts": 4, "num_experts_per_tok": 2}, []),
    # GPT-2 spells hidden_size n_embd, ... (a family compactlm does not prune: the basic fields only)
    ("gpt2", {"n_embd": 64, "n_head": 4, "n_layer": 2, "vocab_size": 99}, []),
    ("gpt2", {"n_embd": 64, "n_head": 4, "vocab_size": 99}, ["num_hidden_layers"]),
    # a multimodal config keeps the language model's fields in text_config
    ("gemma3", {"text_config": {"model_type": "gemma3_text", "hidden_size": 64, "num_attention_heads": 4,
                                "num_hidden_layers": 2, "vocab_size": 99}}, ["intermediate_size"]),
])
def test_missing_fields_by_every_spelling(model_type, raw, missing):
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type, **{k: v for k, v in raw.items() if k != "text_config"},
                                  **({"text_config": raw["text_config"]} if "text_config" in raw else {}))
    assert missing_fields({"model_type": model_type, **raw}, config) == missing


def test_shipped_and_saved_configs_are_complete(tmp_path):
    for name in CONFIGS.glob("*.json"):
        config = load_config(str(name))
        assert missing_fields(json.loads(name.read_text()), config) == []


def test_plan_refuses_a_config_that_leaves_fields_to_defaults(tmp_path, capsys):
    config = json.loads((CONFIGS / "llama-3.1-8b.json").read_text())
    del config["intermediate_size"], config["num_attention_heads"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main(["plan", "--model", str(tmp_path / "config.json"), "--device", "H100"]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not give num_attention_heads, intermediate_size" in err and "\n" not in err
    with pytest.raises(CompactLMError, match="config.json. does not give num_attention_heads, intermediate_size"):
        load_config(str(tmp_path))   # a checkpoint directory is read the same way


def test_distill_refuses_what_cannot_fit_and_names_the_strategy(tmp_path, tiny_checkpoint, capsys):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text((CONFIGS / "llama-3.1-8b.json").read_text())    # 32 GB in fp32: no weights
    code = main(["distill", "--teacher", str(teacher), "--student", str(tiny_checkpoint()), "--out", str(tmp_path / "o"),
                 "--device", "cpu", "--precision", "fp32", "--micro-batch-size", "1", "--seq-len", "64"])
    err = capsys.readouterr().err
    assert code == 2 and "does not fit in memory" in err and "'offload'" in err


def test_default_recipe_fits_this_machine():
    from compactlm.recipes.fit import check_recipe

    plans = check_recipe(load_recipe(None))
    assert plans and cheapest_fitting(plans[0].plan).name == "single"
