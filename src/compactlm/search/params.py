"""Exact parameter arithmetic for an architecture of a supported family (docs/method.md §5).

The search enumerates hundreds of architectures; building each model to count its weights
would be slow, so the count is analytic. It is tested equal to ``parameter_breakdown`` of the
real pruned model for every family (tied/untied embeddings, biases, GQA, q/k norms).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..arch import Architecture, adapter_for


@dataclass(frozen=True)
class ParamLayout:
    """What, besides the architecture's sizes, decides the count: biases and per-head norms."""

    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    head_norms: int = 0        # RMSNorms over head_dim per layer (Qwen3: q_norm and k_norm)


def parameter_layout(config) -> ParamLayout:
    """The layout of a transformers config of a supported family."""
    adapter = adapter_for(config)
    qkv, o, mlp = adapter.biases(config)
    return ParamLayout(qkv_bias=qkv, o_bias=o, mlp_bias=mlp, head_norms=len(adapter.head_norms))


def parameter_counts(arch: Architecture, layout: ParamLayout) -> dict[str, int]:
    """Parameters per part, with the same keys as :func:`compactlm.parameter_breakdown`."""
    e, f, d = arch.hidden_size, arch.intermediate_size, arch.head_dim
    q, kv = arch.num_attention_heads * d, arch.num_key_value_heads * d          # q and k/v widths
    attention = e * q + 2 * e * kv + q * e                                      # q, k, v, o weights
    attention += (q + 2 * kv) * layout.qkv_bias + e * layout.o_bias + layout.head_norms * d
    mlp = 3 * e * f + (2 * f + e) * layout.mlp_bias                             # gate, up, down
    layers = arch.num_hidden_layers
    parts = {
        "embeddings": arch.vocab_size * e * (1 if arch.tie_word_embeddings else 2),
        "attention": layers * attention,
        "mlp": layers * mlp,
        "norms": layers * 2 * e + e,                                           # two per layer + final
    }
    parts["total"] = sum(parts.values())
    return parts


def count_parameters(arch: Architecture, layout: ParamLayout) -> int:
    """Total number of parameters (a tied LM head counted once)."""
    return parameter_counts(arch, layout)["total"]
