"""Exact parameter arithmetic for an architecture of a supported family (docs/method.md §5).

The search enumerates hundreds of architectures; building each model to count its weights
would be slow, so the count is analytic. It is tested equal to ``parameter_breakdown`` of the
real pruned model for every family (tied/untied embeddings, biases, GQA, q/k norms, fused
projections, non-gated MLPs, four norms per layer, experts and shared experts).

Active parameters (MoE) are those one token touches: every parameter except the experts the
router did not pick, ``total - L * (num_experts - num_experts_per_tok) * (parameters of one
expert)``; embeddings count in full, as in the released models' "A3B"-style figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import adapter_for
from .base import Architecture


@dataclass(frozen=True)
class ParamLayout:
    """What, besides the architecture's sizes, decides the count: biases, norms and the MLP's form."""

    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    head_norms: int = 0             # norms over head_dim per layer (Qwen3, Gemma 3: q_norm and k_norm)
    projection_norms: bool = False  # q/k norms over the whole projections (OLMo 2, OLMoE)
    gated: bool = True              # gate, up, down (False: up, down — Nemotron)
    norms_per_layer: int = 2        # Gemma 2/3: 4
    norm_bias: bool = False         # Nemotron's LayerNorm1P
    shared_expert_gate: bool = False


def parameter_layout(config) -> ParamLayout:
    """The layout of a transformers config of a supported family."""
    adapter = adapter_for(config)
    qkv, o, mlp = adapter.biases(config)
    return ParamLayout(qkv_bias=qkv, o_bias=o, mlp_bias=mlp, head_norms=len(adapter.head_norms),
                       projection_norms=adapter.q_projection_norm is not None,
                       gated=adapter.gate_proj is not None or adapter.gate_up_proj is not None or adapter.experts is not None,
                       norms_per_layer=len(adapter.norms), norm_bias=adapter.norm_bias,
                       shared_expert_gate=adapter.shared_expert_gate is not None)


def _expert_parameters(arch: Architecture) -> int:
    """One routed expert: gate and up rows, down columns (experts carry no biases)."""
    return 3 * arch.hidden_size * arch.moe_intermediate_size


def parameter_counts(arch: Architecture, layout: ParamLayout) -> dict[str, int]:
    """Parameters per part, with the same keys as :func:`compactlm.parameter_breakdown`."""
    e, f, d = arch.hidden_size, arch.intermediate_size, arch.head_dim
    q, kv = arch.num_attention_heads * d, arch.num_key_value_heads * d          # q and k/v widths
    attention = e * q + 2 * e * kv + q * e                                      # q, k, v, o weights
    attention += (q + 2 * kv) * layout.qkv_bias + e * layout.o_bias + layout.head_norms * d
    attention += (q + kv) * layout.projection_norms
    matrices = 3 if layout.gated else 2
    mlp = matrices * e * f + ((matrices - 1) * f + e) * layout.mlp_bias * (f > 0)  # gate, up, down (dense)
    if arch.num_experts:
        mlp += arch.num_experts * (e + _expert_parameters(arch))               # router row + expert, each
        s = arch.shared_expert_intermediate_size
        mlp += 3 * e * s + e * layout.shared_expert_gate * (s > 0)
    layers = arch.num_hidden_layers
    per_norm = e * (1 + layout.norm_bias)
    parts = {
        "embeddings": arch.vocab_size * e * (1 if arch.tie_word_embeddings else 2),
        "attention": layers * attention,
        "mlp": layers * mlp,
        "norms": layers * layout.norms_per_layer * per_norm + per_norm,         # per layer + final
    }
    parts["total"] = sum(parts.values())
    return parts


def count_parameters(arch: Architecture, layout: ParamLayout) -> int:
    """Total number of parameters (a tied LM head counted once)."""
    return parameter_counts(arch, layout)["total"]


def count_active_parameters(arch: Architecture, layout: ParamLayout) -> int:
    """Parameters one token touches: the total minus the experts the router does not pick (= total for dense)."""
    idle = max(arch.num_experts - arch.num_experts_per_tok, 0)
    return count_parameters(arch, layout) - arch.num_hidden_layers * idle * _expert_parameters(arch)
