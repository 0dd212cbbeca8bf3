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


def describe(model) -> dict:
    """Architecture and parameter breakdown as a JSON-able dict."""
    arch = adapter_for(model.config).architecture(model.config)
    out = {"model_type": model.config.model_type, "architecture": arch.to_dict(),
           "parameters": parameter_breakdown(model)}
    if arch.is_moe:
        out["active_parameters"] = count_active_parameters(arch, parameter_layout(model.config))
    return out
