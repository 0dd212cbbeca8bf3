"""Registry of architecture adapters, looked up by ``config.model_type``."""

from __future__ import annotations

from ..errors import CompactLMError
from .base import ArchAdapter, Architecture

ADAPTERS: dict[str, ArchAdapter] = {
    "llama": ArchAdapter("llama"),
    "mistral": ArchAdapter("mistral", qkv_bias=False, o_bias=False, mlp_bias=False),
    "qwen2": ArchAdapter("qwen2", qkv_bias=True, o_bias=False, mlp_bias=False),
    "qwen3": ArchAdapter("qwen3", head_norms=("self_attn.q_norm", "self_attn.k_norm"), mlp_bias=False),
}


def adapter_for(config) -> ArchAdapter:
    """The adapter for a model config; a clear error lists the supported families."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise CompactLMError(
            f"Unsupported architecture model_type='{model_type}'. compactlm supports: "
            f"{', '.join(sorted(ADAPTERS))}. Convert the model to one of these or add an adapter in compactlm/arch/."
        )
    return ADAPTERS[model_type]


__all__ = ["ADAPTERS", "ArchAdapter", "Architecture", "adapter_for"]
