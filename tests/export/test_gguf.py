"""GGUF export: tensors and metadata as llama.cpp expects them, read back exactly, bad input refused."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf_fixtures import VOCAB, save_bpe_tokenizer
from helpers import FAMILIES as TINY_FAMILIES
from helpers import make_tiny_model, random_plan

from compactlm.cli import main
from compactlm.errors import CompactLMError
from compactlm.export.gguf import FAMILIES, export_gguf, llama3_rope_factors, permute_for_llamacpp, quant_types
from compactlm.export.gguf_vocab import find_gguf_source
from compactlm.prune import apply_plan

gguf = pytest.importorskip("gguf")

# Keys llama.cpp's loader reads for these architectures (llama-model.cpp load_hparams and
# llama-vocab.cpp load): without them it refuses the file or guesses (rope dims = n_embd / n_head,
# which is wrong once hidden_size != heads * head_dim).
REQUIRED_KEYS = [
    "general.architecture", "general.name", "general.file_type", "general.quantization_version",
    "{arch}.context_length", "{arch}.embedding_length", "{arch}.block_count", "{arch}.feed_forward_length",
    "{arch}.attention.head_count", "{arch}.attention.head_count_kv", "{arch}.attention.key_length",
    "{arch}.attention.value_length", "{arch}.attention.layer_norm_rms_epsilon", "{arch}.rope.freq_base",
    "{arch}.rope.dimension_count", "{arch}.vocab_size",
    "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
]

# Keys llama.cpp reads without a default for these families (src/models/<arch>.cpp load_arch_hparams),
# or that change what it computes, with the values the tiny models of tests/helpers.py must give.
FAMILY_KEYS = {
    "granite": {"granite.attention.scale": 0.2, "granite.embedding_scale": 3.0, "granite.residual_scale": 0.5,
                "granite.logit_scale": 4.0},
    "nemotron": {"nemotron.attention.layer_norm_epsilon": 1e-5, "nemotron.attention.layer_norm_rms_epsilon": 1e-5,
                 "nemotron.rope.dimension_count": 8},                          # partial_rotary_factor 0.5 of 16
    "gemma2": {"gemma2.attn_logit_softcapping": 20.0, "gemma2.final_logit_softcapping": 10.0,
               "gemma2.attention.sliding_window": 6, "gemma2.attention.sliding_window_pattern": [True, False] * 2},
    "gemma3_text": {"gemma3.attention.sliding_window": 6, "gemma3.attention.sliding_window_pattern": [True, False] * 2,
                    "gemma3.rope.freq_base": 1e6, "gemma3.rope.freq_base_swa": 1e4},
    "phi3": {"phi3.rope.scaling.original_context_length": 4096, "phi3.attention.sliding_window": 0},
    "mixtral": {"llama.expert_count": 4, "llama.expert_used_count": 2, "llama.feed_forward_length": 32},
    "olmoe": {"olmoe.expert_count": 4, "olmoe.expert_used_count": 2, "olmoe.feed_forward_length": 32},
    "qwen3_moe": {"qwen3moe.expert_count": 4, "qwen3moe.expert_used_count": 2,
                  "qwen3moe.expert_feed_forward_length": 32},
    "qwen2_moe": {"qwen2moe.expert_count": 4, "qwen2moe.expert_used_count": 2,
                  "qwen2moe.expert_feed_forward_length": 32, "qwen2moe.expert_shared_feed_forward_length": 48},
}

# Every tiny family, as llama.cpp can run it: OLMoE's graph needs as many KV heads as query heads.
EXPORT_CASES = {name: {} for name in TINY_FAMILIES} | {"olmoe": dict(num_key_value_heads=4),
                                                       "olmo2_tied": dict(tie_word_embeddings=True)}
# Families whose llama.cpp graph sizes q/o by head_dim (not hidden x hidden), or that move to one that
# does (a hidden-pruned Qwen2 is written as llama): exported hidden-pruned.
HIDDEN_PRUNABLE = {"llama", "llama_bias_untied", "mistral", "mixtral", "granite", "qwen2", "qwen3", "qwen3_moe",
                   "gemma2", "gemma3_text"}

# The converter's tensor transforms, restated here: q/k rows permuted for the archs of LlamaModel's
# subclasses; norms stored as 1 + w where transformers computes (1 + w) * x; an output matrix
# duplicated from the tied embedding where the arch requires one, dropped where it never reads one.
PERMUTED_ARCHS = {"llama", "granite"}
PLUS_ONE_NORMS = {"gemma2", "gemma3_text", "nemotron"}
OUTPUT_REQUIRED_ARCHS = {"olmo2", "olmoe", "qwen2moe", "nemotron"}

# transformers' GGUF loader can rebuild these tiny configs. It reads no bias switches (llama, nemotron),
# no head_dim for qwen3, no soft-capping / query_pre_attn_scalar / layer pattern for Gemma (its defaults
# are used, so the model takes them) and no expert widths for the Qwen MoEs (their defaults likewise).
LOADER_CASES = {
    "llama": dict(hidden_size=48),                   # hidden != heads * head_dim, as after hidden pruning
    "mistral": {},
    "qwen2": {},
    "qwen3": dict(head_dim=128),                     # the loader's (and Qwen3's) default head_dim
    "gemma2": dict(head_dim=256, query_pre_attn_scalar=256, attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
    "gemma3_text": dict(head_dim=256, query_pre_attn_scalar=256, layer_types=None),
    "nemotron": dict(attention_bias=False, mlp_bias=False),
    "phi3": {},
    "qwen3_moe": dict(moe_intermediate_size=768),
    "qwen2_moe": dict(moe_intermediate_size=1408, shared_expert_intermediate_size=5632),
}


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> Path:
    return save_bpe_tokenizer(tmp_path_factory.mktemp("bpe"))


def _model(family: str, **overrides):
    overrides = {**EXPORT_CASES.get(family, {}), **overrides}
    family = family.removesuffix("_tied")
    return make_tiny_model(family, dtype=torch.float32, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, **overrides)


def _export(model, tmp_path, bpe_dir, quant="f32", name="student"):
    out = tmp_path / f"{name}.{quant}.gguf"
    export_gguf(model, out, quant=quant, hf_dir=bpe_dir, tokenizer_pre="default")
    return out


def _load_gguf(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _expected_tensors(model, arch: str) -> dict[str, np.ndarray]:
    """What llama.cpp's converter writes for ``model``, from its state_dict by the rules above."""
    config = model.config
    name_map = gguf.get_tensor_name_map(next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch),
                                        config.num_hidden_layers)
    tied = config.tie_word_embeddings
    expected = {}
    for hf_name, tensor in model.state_dict().items():
        data = tensor.numpy()
        if hf_name == "lm_head.weight" and (tied or arch == "gemma2"):
            continue
        block = hf_name.split(".")[2] if ".layers." in hf_name else None
        if hf_name.endswith("experts.gate_up_proj"):        # (experts, [gate | up], hidden)
            half = data.shape[1] // 2
            expected[f"blk.{block}.ffn_gate_exps.weight"] = data[:, :half]
            expected[f"blk.{block}.ffn_up_exps.weight"] = data[:, half:]
            continue
        if hf_name.endswith("experts.down_proj"):
            expected[f"blk.{block}.ffn_down_exps.weight"] = data
            continue
        if arch in PERMUTED_ARCHS and (".q_proj." in hf_name or ".k_proj." in hf_name):
            heads = config.num_attention_heads if ".q_proj." in hf_name else config.num_key_value_heads
            data = permute_for_llamacpp(data, heads)
        if config.model_type in PLUS_ONE_NORMS and hf_name.endswith("norm.weight"):
            data = data + np.float32(1)
        if hf_name.endswith("shared_expert_gate.weight"):  # llama.cpp reads {n_embd}
            data = data.reshape(-1)
        expected[name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))] = data
    if tied and arch in OUTPUT_REQUIRED_ARCHS:
        expected["output.weight"] = expected["token_embd.weight"]
    return expected


@pytest.mark.parametrize("family", sorted(EXPORT_CASES))
def test_every_tensor_reads_back_exactly(family, tmp_path, bpe_dir):
    """f32: each GGUF tensor is the HF tensor as llama.cpp's converter lays it out, bit for bit."""
    from gguf import GGUFReader

    model = _model(family)
    reader = GGUFReader(_export(model, tmp_path, bpe_dir))
    arch = reader.fields["general.architecture"].contents()
    assert arch == FAMILIES[model.config.model_type].arch
    stored = {t.name: np.asarray(t.data).reshape([int(d) for d in reversed(t.shape)]) for t in reader.tensors}
    expected = _expected_tensors(model, arch)
    assert set(stored) == set(expected)
    for name, data in expected.items():
        np.testing.assert_array_equal(stored[name], data, err_msg=name)


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
def test_metadata_has_every_key_llamacpp_requires(family, tmp_path, bpe_dir):
    from gguf import GGUFReader

    hidden = 48 if family in HIDDEN_PRUNABLE else 64      # 48: hidden-pruned, != 4 heads x head_dim 16
    model = _model(family, hidden_size=hidden)
    fields = GGUFReader(_export(model, tmp_path, bpe_dir, quant="q8_0")).fields
    arch = fields["general.architecture"].contents()
    missing = [k.format(arch=arch) for k in REQUIRED_KEYS if k.format(arch=arch) not in fields]
    missing += [k for k in FAMILY_KEYS.get(family, {}) if k not in fields]
    assert not missing, f"{family}: missing {missing}"
    assert fields[f"{arch}.attention.key_length"].contents() == 16     # head_dim, not hidden / heads = 12
    assert fields[f"{arch}.embedding_length"].contents() == hidden
    for key, value in FAMILY_KEYS.get(family, {}).items():
        assert fields[key].contents() == pytest.approx(value), key
    assert fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert fields["tokenizer.chat_template"].contents().startswith("{% for m in messages")
    assert len(fields["tokenizer.ggml.tokens"].data) == VOCAB


def test_experts_take_the_type_routers_and_norms_stay_f32(tmp_path, bpe_dir):
    """As llama.cpp's converter: stacked 3-D experts are quantized, routers (ffn_gate_inp) never are."""
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(_export(_model("qwen3_moe"), tmp_path, bpe_dir, quant="q8_0")).tensors}
    assert {tensors[f"blk.0.ffn_{w}_exps.weight"].tensor_type.name for w in ("gate", "up", "down")} == {"Q8_0"}
    assert [int(d) for d in tensors["blk.0.ffn_gate_exps.weight"].shape] == [64, 32, 4]   # {n_embd, n_ff, n_expert}
    assert [int(d) for d in tensors["blk.0.ffn_down_exps.weight"].shape] == [32, 64, 4]
    assert tensors["blk.0.ffn_gate_inp.weight"].tensor_type.name == "F32"
    assert tensors["blk.0.attn_q_norm.weight"].tensor_type.name == "F32"


def test_longrope_becomes_factor_tensors_and_attention_factor(tmp_path, bpe_dir):
    """Phi-3's LongRoPE: llama.cpp's rope_factors_long/short tensors and the cos/sin scale transformers uses."""
    from gguf import GGUFReader

    long, short = [1.0 + i / 8 for i in range(8)], [1.0 + i / 16 for i in range(8)]
    model = _model("phi3", original_max_position_embeddings=64,
                   rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "long_factor": long,
                                    "short_factor": short, "original_max_position_embeddings": 64})
    reader = GGUFReader(_export(model, tmp_path, bpe_dir))
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    np.testing.assert_array_equal(tensors["rope_factors_long.weight"], np.float32(long))
    np.testing.assert_array_equal(tensors["rope_factors_short.weight"], np.float32(short))
    scale = model.model.rotary_emb.attention_scaling                   # max_position_embeddings 256 / 64
    assert scale == pytest.approx(math.sqrt(1 + math.log(4) / math.log(64)))
    assert reader.fields["phi3.rope.scaling.attn_factor"].contents() == pytest.approx(scale)
    assert reader.fields["phi3.rope.scaling.original_context_length"].contents() == 64


@pytest.mark.parametrize("family", sorted(LOADER_CASES))
def test_f32_export_gives_identical_logits_through_transformers_loader(family, tmp_path, bpe_dir):
    model = _model(family, **LOADER_CASES[family])
    loaded = _load_gguf(_export(model, tmp_path, bpe_dir))
    assert loaded.config.hidden_size == model.config.hidden_size
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("quant, tol", [("f16", 2e-2), ("bf16", 1.5e-1), ("q8_0", 1.5e-1), ("q4_0", 1.5)])
def test_reduced_precision_within_the_types_tolerance(quant, tol, tmp_path, bpe_dir):
    """Max logit error grows with the type's step; the f32 case above is the exact one."""
    model = _model("llama")
    loaded = _load_gguf(_export(model, tmp_path, bpe_dir, quant=quant))
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    err = (_logits(loaded, ids) - _logits(model, ids)).abs().max().item()
    assert 0 < err < tol, f"{quant}: max logit error {err}"


def test_odd_row_length_falls_back_to_f16(tmp_path, bpe_dir):
    model = _model("llama", intermediate_size=80)     # down_proj rows of 80: not a multiple of q8_0's 32
    out = tmp_path / "odd.q8_0.gguf"
    result = export_gguf(model, out, quant="q8_0", hf_dir=bpe_dir, tokenizer_pre="default")
    assert result.f16_fallback == [f"blk.{i}.ffn_down.weight" for i in range(4)]
    from gguf import GGUFReader

    types = {t.name: t.tensor_type.name for t in GGUFReader(out).tensors}
    assert types["blk.0.ffn_down.weight"] == "F16" and types["blk.0.ffn_up.weight"] == "Q8_0"
    assert types["blk.0.attn_norm.weight"] == "F32"


def test_converted_tokenizer_encodes_like_the_original(tmp_path, bpe_dir):
    from transformers import AutoTokenizer

    path = _export(_model("llama"), tmp_path, bpe_dir)
    original = AutoTokenizer.from_pretrained(bpe_dir)
    loaded = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    text = "The lazy fox keeps the important dog. Quick!"
    assert loaded(text)["input_ids"] == original(text)["input_ids"]
    assert loaded.eos_token == "</s>" and loaded.bos_token == "<s>"


def test_llama3_rope_scaling_becomes_rope_freqs(tmp_path, bpe_dir):
    from gguf import GGUFReader
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    model = _model("llama", rope_parameters=rope)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](model.config, "cpu")
    plain = 1.0 / rope["rope_theta"] ** (torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    np.testing.assert_allclose(llama3_rope_factors(model.config), (plain / scaled.double()).numpy(), rtol=1e-5)
    tensors = {t.name: t for t in GGUFReader(_export(model, tmp_path, bpe_dir)).tensors}
    np.testing.assert_allclose(np.asarray(tensors["rope_freqs.weight"].data), llama3_rope_factors(model.config))


def test_tokenizer_source_found_through_provenance(tmp_path):
    teacher = tmp_path / "teacher.gguf"
    teacher.write_bytes(b"GGUF")
    pruned, distilled = tmp_path / "pruned", tmp_path / "distilled"
    for path, record in ((pruned, {"source_model": str(teacher)}),
                         (distilled, {"teacher": str(pruned), "student": str(pruned)})):
        path.mkdir()
        (path / "config.json").write_text("{}")
        (path / "compactlm_provenance.json").write_text(json.dumps(record))
    assert find_gguf_source(distilled) == teacher
    assert find_gguf_source(tmp_path / "nowhere") is None


# ---- bad input: one line, exit 2, no file ---------------------------------------------------

@pytest.fixture
def student_dir(tmp_path, bpe_dir):
    from transformers import AutoTokenizer

    path = tmp_path / "student"
    _model("llama").save_pretrained(path)
    AutoTokenizer.from_pretrained(bpe_dir).save_pretrained(path)
    return path


def test_cli_export_writes_a_file(student_dir, tmp_path, capsys):
    out = tmp_path / "s.q8_0.gguf"
    assert main(["export", str(student_dir), "--gguf", str(out), "--tokenizer-pre", "default"]) == 0
    assert out.is_file() and "q8_0" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("extra, fragment", [
    (["--quant", "q4_k"], "Unknown GGUF type 'q4_k'"),
    (["--quant", "nope"], "Available: bf16, f16, f32"),
])
def test_cli_bad_quant(student_dir, tmp_path, capsys, extra, fragment):
    out = tmp_path / "s.gguf"
    assert main(["export", str(student_dir), "--gguf", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_existing_output_needs_overwrite(student_dir, tmp_path, capsys):
    out = tmp_path / "s.gguf"
    out.write_bytes(b"keep me")
    assert main(["export", str(student_dir), "--gguf", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep me"


def test_cli_output_must_be_a_gguf_path(student_dir, tmp_path, capsys):
    assert main(["export", str(student_dir), "--gguf", str(tmp_path / "s.bin")]) == 2
    assert "ending in .gguf" in capsys.readouterr().err


def test_unsupported_family_is_a_clear_error(tmp_path, bpe_dir):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("gpt2", vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2)
    with pytest.raises(CompactLMError, match="model_type='gpt2'.*Supported: gemma2, gemma3_text, granite, llama"):
        export_gguf(AutoModelForCausalLM.from_config(config), tmp_path / "g.gguf", hf_dir=bpe_dir)
    assert list(tmp_path.iterdir()) == []


# What a llama.cpp graph hard-codes that transformers reads from the config: such a model is refused
# with the reason, and no file is written.
LLAMACPP_REFUSES = [
    ("olmo2", dict(hidden_size=48), "sizes q and o as hidden x hidden"),       # hidden-pruned OLMo 2
    ("olmoe", dict(num_key_value_heads=2), "as many KV heads as query heads"),
    ("gemma2", dict(tie_word_embeddings=False), "untied lm_head"),
    ("gemma2", dict(query_pre_attn_scalar=256), "query_pre_attn_scalar=256"),
    ("gemma2", dict(attn_logit_softcapping=None), "attn_logit_softcapping is unset"),
    ("gemma3_text", dict(attn_logit_softcapping=50.0), "no attention soft-capping"),
    ("qwen3_moe", dict(norm_topk_prob=False), "always renormalises"),
    ("qwen2_moe", dict(norm_topk_prob=True), "never renormalises"),
    ("qwen3", dict(attention_bias=True), "o_proj biases"),
    ("llama", dict(hidden_act="gelu"), "activation 'gelu'"),
    ("qwen2", dict(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
     "rope_type 'llama3' has no qwen2 GGUF encoding"),
]


@pytest.mark.parametrize("family, overrides, fragment", LLAMACPP_REFUSES,
                         ids=[f"{f}-{next(iter(o))}" for f, o, _ in LLAMACPP_REFUSES])
def test_what_llamacpp_would_run_differently_is_refused(family, overrides, fragment, tmp_path, bpe_dir):
    with pytest.raises(CompactLMError, match="cannot run this") as error:
        export_gguf(_model(family, **overrides), tmp_path / "s.gguf", quant="f32", hf_dir=bpe_dir)
    assert fragment in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_sliding_window_llamacpp_ignores_is_warned(tmp_path, bpe_dir, caplog):
    """llama.cpp's llama arch attends over the whole context (as its converter leaves Mistral): said, not refused."""
    _export(_model("mistral", sliding_window=16), tmp_path, bpe_dir)
    assert "16-token sliding window that llama.cpp's llama does not apply" in caplog.text


def test_file_transformers_cannot_load_is_said_and_skipped_by_the_eval(tmp_path, bpe_dir, caplog):
    """An olmo2 file is sound for llama.cpp; transformers' loader has no olmo2: a clear error, and `run` skips
    scoring it instead of failing."""
    from types import SimpleNamespace

    from compactlm.models import load_model
    from compactlm.recipes.gguf_stage import gguf_entries
    from compactlm.recipes.records import ExportRecord, GGUFFile

    path = _export(_model("olmo2"), tmp_path, bpe_dir)
    with pytest.raises(CompactLMError, match="run it with llama.cpp"):
        load_model(str(path), with_tokenizer=False)
    recipe = SimpleNamespace(export=SimpleNamespace(evaluate=True), steps=[SimpleNamespace(name="student")])
    files = [GGUFFile(path=str(path), quant="f32", bytes=1, tokenizer="bpe", student="s", arch="olmo2"),
             GGUFFile(path="q.gguf", quant="q8_0", bytes=1, tokenizer="bpe", student="s", arch="qwen3moe")]
    assert gguf_entries(recipe, ExportRecord(files=files)) == [("student: GGUF q8_0", "q.gguf")]
    assert "no 'olmo2' architecture" in caplog.text


def _hidden_pruned_qwen2():
    """A Qwen2 hidden-pruned as compactlm prunes it: hidden 64 -> 40, still 4 heads x head_dim 16."""
    model = _model("qwen2")
    return apply_plan(model, random_plan(model, hidden=40))


def test_hidden_pruned_qwen2_is_written_as_llama_with_permuted_biases(tmp_path, bpe_dir, caplog):
    """llama.cpp's qwen2 sizes q/o as hidden x hidden, its llama arch by heads x head_dim: the student becomes
    llama, whose interleaved rotary layout permutes q/k rows and biases. Undoing that as transformers' loader
    does gives every tensor of the student back, bit for bit."""
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    student = _hidden_pruned_qwen2()
    config = student.config
    out = tmp_path / "student.f32.gguf"
    with caplog.at_level(logging.INFO, logger="compactlm.export.gguf"):
        result = export_gguf(student, out, quant="f32", hf_dir=bpe_dir, tokenizer_pre="qwen2")
    assert result.arch == "llama"
    assert ("qwen2 with hidden_size=40 != 4 heads x head_dim 16, which llama.cpp's qwen2 sizes as hidden x hidden: "
            "written as llama.cpp's llama arch") in caplog.text
    reader = GGUFReader(out)
    stored = {t.name: np.asarray(t.data).reshape([int(d) for d in reversed(t.shape)]) for t in reader.tensors}
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    hf = {name_map.get_name(n, try_suffixes=(".weight", ".bias")): t.numpy() for n, t in student.state_dict().items()}
    assert set(stored) == set(hf) and {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= set(stored)
    unpermute = LlamaTensorProcessor(config={"num_attention_heads": config.num_attention_heads,
                                             "num_key_value_heads": config.num_key_value_heads})
    for name, data in stored.items():
        np.testing.assert_array_equal(unpermute.process(data, name).weights, hf[name], err_msg=name)
    expected = {"llama.embedding_length": 40, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
                "llama.attention.key_length": 16, "llama.attention.value_length": 16, "llama.rope.dimension_count": 16,
                "llama.rope.freq_base": config.rope_parameters["rope_theta"], "tokenizer.ggml.pre": "qwen2"}
    assert {key: reader.fields[key].contents() for key in expected} == expected


def test_unpruned_qwen2_keeps_the_qwen2_arch(tmp_path, bpe_dir):
    """As llama.cpp's converter: hidden = heads x head_dim stays qwen2 (its q/k in NEOX layout, unpermuted)."""
    assert export_gguf(_model("qwen2"), tmp_path / "s.gguf", quant="f32", hf_dir=bpe_dir).arch == "qwen2"


def test_llama_file_with_biases_is_refused_and_skipped_by_the_eval(tmp_path, bpe_dir, caplog):
    """transformers' GGUF loader reads no bias switches for llama: it would load the hidden-pruned Qwen2 without its
    biases. load_model says so instead, and `run` skips scoring the file; a llama file without biases still loads."""
    from types import SimpleNamespace

    from compactlm.models import load_model
    from compactlm.recipes.gguf_stage import gguf_entries
    from compactlm.recipes.records import ExportRecord, GGUFFile

    biased = _export(_hidden_pruned_qwen2(), tmp_path, bpe_dir, name="pruned")
    plain = _export(_model("llama"), tmp_path, bpe_dir, name="plain")
    with pytest.raises(CompactLMError, match="written as llama arch with biases, which transformers' GGUF loader "
                                             "cannot read; run it with llama.cpp"):
        load_model(str(biased), with_tokenizer=False)
    assert load_model(str(plain), with_tokenizer=False).config.model_type == "llama"
    recipe = SimpleNamespace(export=SimpleNamespace(evaluate=True), steps=[SimpleNamespace(name="student")])
    files = [GGUFFile(path=str(path), quant=quant, bytes=1, tokenizer="bpe", student="s", arch="llama")
             for path, quant in ((biased, "f32"), (plain, "q8_0"))]
    assert gguf_entries(recipe, ExportRecord(files=files)) == [("student: GGUF q8_0", str(plain))]
    assert "eval student: GGUF f32: skipped: written as llama arch with biases" in caplog.text


def test_failure_mid_write_leaves_no_file(tmp_path, bpe_dir, monkeypatch):
    def broken(data, qtype):
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf.quants, "quantize", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_gguf(_model("llama"), tmp_path / "s.q8_0.gguf", quant="q8_0", hf_dir=bpe_dir)
    assert list(tmp_path.iterdir()) == []


def test_offered_types_are_the_packages_writers():
    assert {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"} <= set(quant_types())
    assert not any(name.endswith("_k") for name in quant_types())
