"""A GGUF teacher is de-quantised once into the cache; later loads read the copy and give the same model."""

from __future__ import annotations

import os

import pytest
import torch
import transformers.modeling_gguf_pytorch_utils as gguf_utils
from export.gguf_fixtures import VOCAB, save_bpe_tokenizer
from helpers import make_tiny_model

from compactlm import load_model
from compactlm.export.gguf import export_gguf
from compactlm.models import load_tokenizer

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    model = make_tiny_model("llama", dtype=torch.float32, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2,
                            hidden_size=64, intermediate_size=128)   # rows of 64: q8_0 blocks, a real de-quantisation
    path = root / "teacher.q8_0.gguf"
    export_gguf(model, path, quant="q8_0", hf_dir=save_bpe_tokenizer(root / "bpe"), tokenizer_pre="default")
    return path


def _load(path, dtype, cache: bool, monkeypatch):
    monkeypatch.setenv("COMPACTLM_GGUF_CACHE", "1" if cache else "0")   # 1: any GGUF file, not only built-ins
    return load_model(str(path), dtype=dtype)


def test_only_built_in_models_are_cached_by_default(gguf_file, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPACTLM_CACHE", str(tmp_path))
    monkeypatch.delenv("COMPACTLM_GGUF_CACHE", raising=False)
    load_model(str(gguf_file))                       # a run's exported student, say: read, not copied
    assert not (tmp_path / "gguf").exists()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cached_copy_loads_the_same_model_and_tokenizer(gguf_file, dtype, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPACTLM_CACHE", str(tmp_path))
    direct, direct_tok = _load(gguf_file, dtype, False, monkeypatch)
    assert not (tmp_path / "gguf").exists()
    built, _ = _load(gguf_file, dtype, True, monkeypatch)           # builds the copy
    assert len(list((tmp_path / "gguf").iterdir())) == 1

    def never(*args, **kwargs):
        raise AssertionError("the GGUF file was parsed again")

    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", never)
    cached, cached_tok = _load(gguf_file, dtype, True, monkeypatch)  # reads only the copy
    for model in (built, cached):
        got, want = model.state_dict(), direct.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        assert got["model.embed_tokens.weight"].dtype == getattr(torch, dtype)
    text = "The quick brown fox jumps over the lazy dog."
    assert cached_tok(text) == direct_tok(text) and cached_tok.pad_token == direct_tok.pad_token
    assert load_tokenizer(str(gguf_file)).__class__ is cached_tok.__class__


def test_changed_file_gets_a_new_copy_and_unwritable_cache_falls_back(gguf_file, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPACTLM_CACHE", str(tmp_path))
    _load(gguf_file, "float32", True, monkeypatch)
    os.utime(gguf_file, ns=(0, gguf_file.stat().st_mtime_ns + 1))
    _load(gguf_file, "float32", True, monkeypatch)
    assert len([p for p in (tmp_path / "gguf").iterdir() if not p.name.startswith(".")]) == 2
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("COMPACTLM_CACHE", str(tmp_path / "file" / "cache"))   # under a file: cannot be created
    model, _ = _load(gguf_file, "float32", True, monkeypatch)
    assert model.config.model_type == "llama"
