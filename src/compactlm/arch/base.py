"""Architecture adapters: the only code in compactlm that knows a family's module names.

Pruning, importance and distillation speak of heads, neurons, channels and layers; an
adapter maps those to parameter names (``model.layers.3.self_attn.q_proj.weight``) and to
config fields. All families supported today share the Llama layout (pre-norm residual blocks,
separate q/k/v/o projections, gated MLP), so one class describes them, parameterised by the
few places they differ.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

from torch import nn


@dataclass(frozen=True)
class Architecture:
    """The shape of a decoder: every number that pruning can change.

    ``head_dim`` is never pruned; it is carried so that configs stay explicit once
    ``hidden_size != num_attention_heads * head_dim``.
    """

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int
    head_dim: int
    vocab_size: int = 0
    tie_word_embeddings: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "Architecture":
        return Architecture(**{**asdict(self), **{k: v for k, v in changes.items() if v is not None}})


@dataclass(frozen=True)
class ArchAdapter:
    """Module names and config conventions of one model family (Llama layout)."""

    model_type: str
    layers: str = "model.layers"
    embed_tokens: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    q_proj: str = "self_attn.q_proj"
    k_proj: str = "self_attn.k_proj"
    v_proj: str = "self_attn.v_proj"
    o_proj: str = "self_attn.o_proj"
    gate_proj: str = "mlp.gate_proj"
    up_proj: str = "mlp.up_proj"
    down_proj: str = "mlp.down_proj"
    input_norm: str = "input_layernorm"
    post_attention_norm: str = "post_attention_layernorm"
    head_norms: tuple[str, ...] = ()     # per-head q/k RMSNorms over head_dim (Qwen3)
    per_layer_config_lists: tuple[str, ...] = field(default=("layer_types",))
    # Biases: True/False when the family hard-codes them, else the config field that switches them.
    qkv_bias: bool | str = "attention_bias"
    o_bias: bool | str = "attention_bias"
    mlp_bias: bool | str = "mlp_bias"

    # -- modules -----------------------------------------------------------------------
    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers)

    def layer_module(self, layer: nn.Module, name: str) -> nn.Module:
        return layer.get_submodule(name)

    def hidden_norms(self, layer: nn.Module) -> list[nn.Module]:
        """The norms whose outputs feed attention and MLP (hidden-channel importance sites)."""
        return [layer.get_submodule(self.input_norm), layer.get_submodule(self.post_attention_norm)]

    def decoder_body(self, model: nn.Module) -> nn.Module:
        """The transformer without the LM head (``model.model``)."""
        return model.get_submodule(self.layers.rsplit(".", 1)[0])

    # -- architecture & config ---------------------------------------------------------
    def architecture(self, config) -> Architecture:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return Architecture(
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_attention_heads=heads,
            num_key_value_heads=getattr(config, "num_key_value_heads", None) or heads,
            num_hidden_layers=config.num_hidden_layers,
            head_dim=head_dim,
            vocab_size=config.vocab_size,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )

    def biases(self, config) -> tuple[bool, bool, bool]:
        """Whether q/k/v, o and the MLP projections carry biases in this config."""
        def flag(rule: bool | str) -> bool:
            return rule if isinstance(rule, bool) else bool(getattr(config, rule, False))
        return flag(self.qkv_bias), flag(self.o_bias), flag(self.mlp_bias)

    def check_target(self, target: Architecture) -> None:
        """Raise if transformers would refuse to save/load this family at ``target``'s sizes.

        Config classes carry their own validators (transformers 5's ``LlamaConfig`` demands
        ``hidden_size % num_attention_heads == 0`` even with an explicit ``head_dim``); asking
        the real config class keeps us in step with whatever version is installed.
        """
        from transformers import AutoConfig

        from ..errors import CompactLMError

        fields = {k: v for k, v in target.to_dict().items() if k != "tie_word_embeddings"}
        try:
            config = AutoConfig.for_model(self.model_type, **fields)
            if hasattr(config, "validate"):
                config.validate()
        except Exception as err:  # validators raise ValueError or hub's StrictDataclass errors
            cause = err.__cause__ or err
            raise CompactLMError(
                f"transformers ({self.model_type} config) rejects the target {fields}: {str(cause).strip().splitlines()[-1]} "
                f"Choose sizes that satisfy it, e.g. a --hidden-size that is a multiple of --num-attention-heads."
            ) from err

    def pruned_config(self, config, target: Architecture, kept_layers: list[int]):
        """A copy of ``config`` describing ``target``; per-layer lists follow ``kept_layers``."""
        new = copy.deepcopy(config)
        new.hidden_size = target.hidden_size
        new.intermediate_size = target.intermediate_size
        new.num_attention_heads = target.num_attention_heads
        new.num_key_value_heads = target.num_key_value_heads
        new.num_hidden_layers = target.num_hidden_layers
        new.head_dim = target.head_dim  # explicit: hidden pruning breaks hidden = heads * head_dim
        for name in self.per_layer_config_lists:
            values = getattr(new, name, None)
            if isinstance(values, (list, tuple)) and len(values) == config.num_hidden_layers:
                setattr(new, name, [values[i] for i in kept_layers])
        if hasattr(new, "max_window_layers") and getattr(config, "max_window_layers", None) is not None:
            # Qwen2/3: layers at index >= max_window_layers use sliding windows; keep that split.
            new.max_window_layers = sum(1 for i in kept_layers if i < config.max_window_layers)
        if hasattr(new, "quantization_config"):  # a GGUF source; the student is plain weights
            del new.quantization_config
        return new
