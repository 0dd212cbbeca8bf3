"""Registry of architecture adapters, looked up by ``config.model_type``.

Each entry says what its family has that Llama does not (docs/method.md §3, "Families").
"""

from __future__ import annotations

from ..errors import CompactLMError
from .base import MOE_FIELDS, ArchAdapter, Architecture, LogitTransform, TransformedHead, config_names, logit_chunk_tokens

_QK_PER_HEAD = ("self_attn.q_norm", "self_attn.k_norm")
_QK_PROJECTION = dict(q_projection_norm="self_attn.q_norm", k_projection_norm="self_attn.k_norm")
_MOE = dict(gate_proj=None, up_proj=None, down_proj=None, router="mlp.gate", experts="mlp.experts", mlp_bias=False)
_GEMMA = dict(norms=("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                     "post_feedforward_layernorm"), norm_offset=1.0, embed_scale=True)

ADAPTERS: dict[str, ArchAdapter] = {
    "llama": ArchAdapter("llama"),
    "mistral": ArchAdapter("mistral", qkv_bias=False, o_bias=False, mlp_bias=False),
    "qwen2": ArchAdapter("qwen2", qkv_bias=True, o_bias=False, mlp_bias=False),
    "qwen3": ArchAdapter("qwen3", head_norms=_QK_PER_HEAD, mlp_bias=False),
    "granite": ArchAdapter("granite"),   # embedding/residual/attention/logits multipliers: config scalars, kept
    "nemotron": ArchAdapter("nemotron", gate_proj=None, norm_bias=True),   # up -> relu2 -> down; LayerNorm1P with bias
    "gemma2": ArchAdapter("gemma2", mlp_bias=False, **_GEMMA),
    "gemma3_text": ArchAdapter("gemma3_text", head_norms=_QK_PER_HEAD, mlp_bias=False, **_GEMMA),
    "phi3": ArchAdapter("phi3", q_proj=None, k_proj=None, v_proj=None, qkv_proj="self_attn.qkv_proj",
                        gate_proj=None, up_proj=None, gate_up_proj="mlp.gate_up_proj",
                        qkv_bias=False, o_bias=False, mlp_bias=False),
    "olmo2": ArchAdapter("olmo2", norms=("post_attention_layernorm", "post_feedforward_layernorm"),
                         mlp_bias=False, **_QK_PROJECTION),
    "qwen3_moe": ArchAdapter("qwen3_moe", head_norms=_QK_PER_HEAD, **_MOE, config_names=config_names(
        intermediate_size=None, num_experts="num_experts", moe_intermediate_size="moe_intermediate_size",
        num_experts_per_tok="num_experts_per_tok")),
    "mixtral": ArchAdapter("mixtral", qkv_bias=False, o_bias=False, **_MOE, stored_experts="block_sparse_moe.experts",
                           stored_expert_projections=("w1", "w3", "w2"), stored_router="block_sparse_moe.gate",
                           config_names=config_names(
        intermediate_size=None, num_experts="num_local_experts", moe_intermediate_size="intermediate_size",
        num_experts_per_tok="num_experts_per_tok")),
    "olmoe": ArchAdapter("olmoe", **_QK_PROJECTION, **_MOE, hidden_is_heads_x_head_dim=True, config_names=config_names(
        intermediate_size=None, num_experts="num_experts", moe_intermediate_size="intermediate_size",
        num_experts_per_tok="num_experts_per_tok")),
    "qwen2_moe": ArchAdapter("qwen2_moe", qkv_bias="qkv_bias", o_bias=False, **_MOE,
                             shared_expert="mlp.shared_expert", shared_expert_gate="mlp.shared_expert_gate",
                             config_names=config_names(
        intermediate_size=None, num_experts="num_experts", moe_intermediate_size="moe_intermediate_size",
        shared_expert_intermediate_size="shared_expert_intermediate_size", num_experts_per_tok="num_experts_per_tok")),
}


def adapter_named(model_type: str | None) -> ArchAdapter:
    """The adapter of a family by its ``model_type``; a clear error lists the supported families."""
    if model_type not in ADAPTERS:
        raise CompactLMError(
            f"Unsupported architecture model_type='{model_type}'. compactlm supports: "
            f"{', '.join(sorted(ADAPTERS))}. Convert the model to one of these or add an adapter in compactlm/arch/."
        )
    return ADAPTERS[model_type]


def adapter_for(config) -> ArchAdapter:
    """The adapter for a model config, checked against what this family's pruning supports."""
    adapter = adapter_named(getattr(config, "model_type", None))
    adapter.check_config(config)
    return adapter


__all__ = ["ADAPTERS", "MOE_FIELDS", "ArchAdapter", "Architecture", "LogitTransform", "TransformedHead", "adapter_for",
           "adapter_named", "logit_chunk_tokens"]
