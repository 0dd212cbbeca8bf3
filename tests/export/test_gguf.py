"""GGUF export: tensors and metadata as llama.cpp expects them, read back exactly, bad input refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf_fixtures import VOCAB, save_bpe_tokenizer
from helpers import make_tiny_model

from compactlm.cli import main
from compactlm.errors import CompactLMError
from compactlm.export.gguf import FAMILIES, export_gguf, llama3_rope_factors, permute_for_llamacpp, quant_types
from compactlm.export.gguf_vocab import find_gguf_source

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

# transformers' GGUF loader can rebuild these tiny configs (it reads no bias switches for llama
# and no head_dim for qwen3, so those cases are checked at the tensor level only).
LOADER_CASES = {
    "llama": dict(hidden_size=48),                   # hidden != heads * head_dim, as after hidden pruning
    "mistral": {},
    "qwen2": {},
    "qwen3": dict(head_dim=128),                     # the loader's (and Qwen3's) default head_dim
}


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> Path:
    return save_bpe_tokenizer(tmp_path_factory.mktemp("bpe"))


def _model(family: str, **overrides):
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


@pytest.mark.parametrize("family", ["llama", "llama_bias_untied", "mistral", "qwen2", "qwen3"])
def test_every_tensor_reads_back_exactly(family, tmp_path, bpe_dir):
    """f32: each GGUF tensor equals the HF tensor (q/k rows in llama.cpp's order for the llama arch)."""
    from gguf import GGUFReader

    model = _model(family)
    path = _export(model, tmp_path, bpe_dir)
    reader = GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    assert arch == FAMILIES[model.config.model_type].arch
    name_map = gguf.get_tensor_name_map(next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch), 4)
    stored = {t.name: np.asarray(t.data).reshape([int(d) for d in reversed(t.shape)]) for t in reader.tensors}
    expected = {}
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        data = tensor.numpy()
        if arch == "llama" and (".q_proj." in hf_name or ".k_proj." in hf_name):
            heads = model.config.num_attention_heads if ".q_proj." in hf_name else model.config.num_key_value_heads
            data = permute_for_llamacpp(data, heads)
        expected[name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))] = data
    assert set(stored) == set(expected)
    for name, data in expected.items():
        np.testing.assert_array_equal(stored[name], data, err_msg=name)


def test_metadata_has_every_key_llamacpp_requires(tmp_path, bpe_dir):
    from gguf import GGUFReader

    for family in ("llama", "qwen2", "qwen3"):
        model = _model(family, hidden_size=48)
        path = _export(model, tmp_path, bpe_dir, quant="q8_0", name=family)
        fields = GGUFReader(path).fields
        arch = fields["general.architecture"].contents()
        missing = [k.format(arch=arch) for k in REQUIRED_KEYS if k.format(arch=arch) not in fields]
        assert not missing, f"{family}: missing {missing}"
        assert fields[f"{arch}.attention.key_length"].contents() == 16     # head_dim, not hidden / heads = 12
        assert fields[f"{arch}.embedding_length"].contents() == 48
        assert fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q8_0)
        assert fields["tokenizer.chat_template"].contents().startswith("{% for m in messages")
        assert len(fields["tokenizer.ggml.tokens"].data) == VOCAB


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
    with pytest.raises(CompactLMError, match="does not support model_type='gpt2'.*Supported: llama, mistral"):
        export_gguf(AutoModelForCausalLM.from_config(config), tmp_path / "g.gguf", hf_dir=bpe_dir)
    assert list(tmp_path.iterdir()) == []


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
