"""Parameter breakdown of a model: embeddings, attention, MLP, norms (``compactlm info``)."""

from __future__ import annotations

from .arch import adapter_for


def parameter_breakdown(model) -> dict[str, int]:
    """Count unique parameters per part; a tied LM head counts once, under embeddings."""
    a = adapter_for(model.config)
    parts = {"embeddings": 0, "attention": 0, "mlp": 0, "norms": 0, "other": 0}
    attention = {a.q_proj, a.k_proj, a.v_proj, a.o_proj, *a.head_norms}
    mlp = {a.gate_proj, a.up_proj, a.down_proj}
    norms = {a.input_norm, a.post_attention_norm}
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
    return {"model_type": model.config.model_type, "architecture": arch.to_dict(),
            "parameters": parameter_breakdown(model)}
