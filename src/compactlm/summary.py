"""Parameter breakdown of a model: embeddings, attention, MLP, norms (``compactlm info``)."""

from __future__ import annotations

from .arch import adapter_for
from .arch.params import count_active_parameters, parameter_layout


def parameter_breakdown(model) -> dict[str, int]:
    """Count unique parameters per part; a tied LM head counts once, under embeddings."""
    a = adapter_for(model.config)
    parts = {"embeddings": 0, "attention": 0, "mlp": 0, "norms": 0, "other": 0}
    attention, mlp, norms = set(a.attention_modules), set(a.mlp_modules), set(a.norms)
    layer_prefix = a.layers + "."
    for name, p in model.named_parameters():  # named_parameters() yields a tied weight once
        module = name.rpartition(".")[0]
        if name.startswith(layer_prefix):
            inner = module[len(layer_prefix):].partition(".")[2]
            part = "attention" if inner in attention else "mlp" if inner in mlp else "norms" if inner in norms else "other"
        elif module in (a.embed_tokens, a.lm_head):
            part = "embeddings"
        elif module == a.final_norm:
            part = "norms"
        else:
            part = "other"
        parts[part] += p.numel()
    if not parts["other"]:
        del parts["other"]
    parts["total"] = sum(parts.values())
    return parts


def layer_pattern(config) -> dict[str, list[int]] | None:
    """Which layers are of which kind (``layer_types``: Gemma's sliding and global attention), or None
    when every layer is alike: ``{"sliding_attention": [0, 1, 2, 3, 4, 6, ...], "full_attention": [5, 11, 17]}``."""
    kinds = getattr(config, "layer_types", None) or []
    if len(set(kinds)) < 2:
        return None
    pattern: dict[str, list[int]] = {}
    for index, kind in enumerate(kinds):
        pattern.setdefault(kind, []).append(index)
    return pattern


def describe(model) -> dict:
    """Architecture and parameter breakdown as a JSON-able dict."""
    arch = adapter_for(model.config).architecture(model.config)
    out = {"model_type": model.config.model_type, "architecture": arch.to_dict(),
           "parameters": parameter_breakdown(model)}
    if (pattern := layer_pattern(model.config)) is not None:
        out["layer_types"] = pattern
    if arch.is_moe:
        out["active_parameters"] = count_active_parameters(arch, parameter_layout(model.config))
    return out
