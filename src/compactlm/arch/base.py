"""Architecture adapters: the only code in compactlm that knows a family's module names.

Pruning, importance and distillation speak of heads, neurons, channels, experts and layers;
an adapter maps those to parameter names (``model.layers.3.self_attn.q_proj.weight``) and
to config fields. Every supported family is a pre- or post-norm residual decoder; one class
describes them all, by the parts each has (docs/method.md §3, "Families"):

* attention: separate q/k/v projections, or one fused ``qkv_proj`` (Phi-3, rows [q | k | v]);
  optional q/k norms, either per head over ``head_dim`` (Qwen3, Gemma 3) or over the whole
  projection (OLMo 2, OLMoE: head pruning slices them);
* MLP: gated (gate, up, down), non-gated (up, down: Nemotron), gated with one fused
  ``gate_up_proj`` (Phi-3, rows [gate | up]), or mixture-of-experts: a router, experts stored
  as 3-D tensors (``gate_up_proj`` (X, 2I, E), ``down_proj`` (X, E, I)) and an optional shared
  expert with its sigmoid gate (Qwen2-MoE);
* norms: the names of every norm over the hidden channels in a layer (two for Llama, four for
  Gemma 2/3, the two post-norms of OLMo 2); all are sliced on hidden pruning and all are
  hidden-channel importance sites. Gemma's norms compute ``(1 + weight) * x`` and its
  embeddings are scaled by ``sqrt(hidden_size)`` (``norm_offset``, ``embed_scale``).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from transformers import AutoConfig

from ..errors import CompactLMError

# Architecture fields a family may lack (0 = absent): the MoE axes.
MOE_FIELDS = ("num_experts", "moe_intermediate_size", "shared_expert_intermediate_size")


@dataclass(frozen=True)
class Architecture:
    """The shape of a decoder: every number that pruning can change.

    ``head_dim`` is never pruned; it is carried so that configs stay explicit once
    ``hidden_size != num_attention_heads * head_dim``. ``intermediate_size`` is the dense
    MLP's width (0 for a mixture-of-experts model, whose layers have none);
    ``moe_intermediate_size`` is each expert's width and ``num_experts_per_tok`` the router's
    top-k, which pruning keeps.
    """

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int
    head_dim: int
    vocab_size: int = 0
    tie_word_embeddings: bool = True
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0

    def to_dict(self) -> dict:
        """The fields; a dense model's MoE fields (all 0) are left out, so its plans, scores and records read as before."""
        d = asdict(self)
        if not self.is_moe:
            for name in (*MOE_FIELDS, "num_experts_per_tok"):
                del d[name]
        return d

    def replace(self, **changes) -> "Architecture":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0


# Architecture field -> config attribute of a dense family; None: the family has no such part.
DENSE_CONFIG_NAMES = {"hidden_size": "hidden_size", "intermediate_size": "intermediate_size",
                      "num_attention_heads": "num_attention_heads", "num_key_value_heads": "num_key_value_heads",
                      "num_hidden_layers": "num_hidden_layers", "head_dim": "head_dim",
                      **{name: None for name in MOE_FIELDS}, "num_experts_per_tok": None}


def config_names(**changes: str | None) -> dict[str, str | None]:
    return {**DENSE_CONFIG_NAMES, **changes}


LOGIT_CHUNK = 1 << 27   # logits an LM-loss pass computes at once: 128M floats, 512 MB in float32


def logit_chunk_tokens(vocab_size: int) -> int:
    """Tokens whose logits a loss-only pass projects at once: 2,730 for a 49K vocabulary, 512 for Gemma's 262K
    (whose 8 x 512 tokens at once would be 4.3 GB of float32 logits)."""
    return max(1, LOGIT_CHUNK // vocab_size)


@dataclass(frozen=True)
class LogitTransform:
    """What a family's ``ForCausalLM.forward`` does to the LM head's output.

    Granite divides by ``logits_scaling``; Gemma 2/3 soft-cap with ``tanh(x / cap) * cap``
    (``final_logit_softcapping``). Losses and evaluations that apply the LM head themselves
    (chunk by chunk) apply this after it, so they score the logits the model generates from.
    """

    divide_by: float = 1.0
    softcap: float | None = None

    @classmethod
    def of(cls, config) -> "LogitTransform":
        return cls(float(getattr(config, "logits_scaling", None) or 1.0),
                   getattr(config, "final_logit_softcapping", None) or None)

    @property
    def identity(self) -> bool:
        return self.divide_by == 1.0 and self.softcap is None

    def __call__(self, logits):
        if self.divide_by != 1.0:
            logits = logits / self.divide_by
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


class TransformedHead(nn.Module):
    """An LM head followed by the family's :class:`LogitTransform` (a view: the model is not changed)."""

    def __init__(self, head: nn.Module, transform: LogitTransform):
        super().__init__()
        self.head, self.transform = head, transform

    @property
    def weight(self):
        return self.head.weight

    @property
    def bias(self):
        return self.head.bias

    def forward(self, hidden):
        return self.transform(self.head(hidden))


@dataclass(frozen=True)
class ArchAdapter:
    """Module names and config conventions of one model family (defaults: the Llama layout)."""

    model_type: str
    layers: str = "model.layers"
    embed_tokens: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    # attention: separate q/k/v, or a fused qkv_proj (then q/k/v_proj are None)
    q_proj: str | None = "self_attn.q_proj"
    k_proj: str | None = "self_attn.k_proj"
    v_proj: str | None = "self_attn.v_proj"
    qkv_proj: str | None = None
    o_proj: str = "self_attn.o_proj"
    head_norms: tuple[str, ...] = ()           # q/k norms per head over head_dim (Qwen3, Gemma 3): never sliced
    q_projection_norm: str | None = None       # norm over the whole q projection, H*d (OLMo 2, OLMoE)
    k_projection_norm: str | None = None       # norm over the whole k projection, KV*d
    # dense MLP: gate/up/down, up/down (gate_proj None), or a fused gate_up_proj
    gate_proj: str | None = "mlp.gate_proj"
    up_proj: str | None = "mlp.up_proj"
    gate_up_proj: str | None = None
    down_proj: str | None = "mlp.down_proj"
    # mixture of experts (then the dense MLP names are None)
    router: str | None = None                  # weight (num_experts, hidden)
    experts: str | None = None                 # gate_up_proj (X, 2I, E), down_proj (X, E, I)
    shared_expert: str | None = None           # a dense gated MLP seen by every token (Qwen2-MoE)
    shared_expert_gate: str | None = None      # weight (1, hidden): sigmoid gate of the shared expert
    # how checkpoints store experts on disk (one 2-D tensor each; transformers fuses them on load)
    stored_experts: str = "mlp.experts"
    stored_expert_projections: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    stored_router: str = "mlp.gate"
    # every norm over the hidden channels in a layer, in forward order
    norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    norm_bias: bool = False                    # Nemotron's LayerNorm1P: weight and bias
    norm_offset: float = 0.0                   # Gemma: norms compute (norm_offset + weight) * x
    embed_scale: bool = False                  # Gemma: embeddings are multiplied by sqrt(hidden_size)
    # OLMoE's modelling code sizes q_norm by hidden_size: the target must keep hidden = heads x head_dim
    hidden_is_heads_x_head_dim: bool = False
    per_layer_config_lists: tuple[str, ...] = field(default=("layer_types",))
    config_names: dict = field(default_factory=lambda: dict(DENSE_CONFIG_NAMES), hash=False)
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
        """Every norm over the hidden channels of ``layer`` (hidden-channel importance sites)."""
        return [layer.get_submodule(name) for name in self.norms]

    def decoder_body(self, model: nn.Module) -> nn.Module:
        """The transformer without the LM head (``model.model``)."""
        return model.get_submodule(self.layers.rsplit(".", 1)[0])

    @property
    def attention_modules(self) -> tuple[str, ...]:
        return tuple(n for n in (self.q_proj, self.k_proj, self.v_proj, self.qkv_proj, self.o_proj, *self.head_norms,
                                 self.q_projection_norm, self.k_projection_norm) if n)

    @property
    def mlp_modules(self) -> tuple[str, ...]:
        shared = () if not self.shared_expert else tuple(f"{self.shared_expert}.{p}" for p in ("gate_proj", "up_proj",
                                                                                                 "down_proj"))
        return tuple(n for n in (self.gate_proj, self.up_proj, self.gate_up_proj, self.down_proj, self.router,
                                 self.experts, *shared, self.shared_expert_gate) if n)

    @property
    def probes(self) -> tuple[str, str]:
        """Two linear modules (one in the first layer, one in the last) that fingerprints and placement probes read."""
        return self.down_proj or self.o_proj, self.q_proj or self.qkv_proj

    def stored_shapes(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """In-memory tensor shapes -> the per-expert names and shapes a checkpoint stores on disk."""
        if self.experts is None:
            return shapes
        gate, up, down = self.stored_expert_projections
        out = {}
        for key, shape in shapes.items():
            prefix, _, name = key.rpartition(f".{self.experts}.")
            if name == "gate_up_proj":                    # (X, 2I, E) -> X gate and X up (I, E)
                for e in range(shape[0]):
                    for projection in (gate, up):
                        out[f"{prefix}.{self.stored_experts}.{e}.{projection}.weight"] = (shape[1] // 2, shape[2])
            elif name == "down_proj":                     # (X, E, I) -> X down (E, I)
                for e in range(shape[0]):
                    out[f"{prefix}.{self.stored_experts}.{e}.{down}.weight"] = (shape[1], shape[2])
            elif key.endswith(f".{self.router}.weight"):
                out[key.replace(f".{self.router}.", f".{self.stored_router}.")] = shape
            else:
                out[key] = shape
        return out

    # -- architecture & config ---------------------------------------------------------
    def architecture(self, config) -> Architecture:
        names = self.config_names

        def read(name: str, default=0):
            attr = names.get(name)
            return default if attr is None else getattr(config, attr, None)

        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return Architecture(
            hidden_size=config.hidden_size,
            intermediate_size=read("intermediate_size") or 0,
            num_attention_heads=heads,
            num_key_value_heads=getattr(config, "num_key_value_heads", None) or heads,
            num_hidden_layers=config.num_hidden_layers,
            head_dim=head_dim,
            vocab_size=config.vocab_size,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            **{name: int(read(name) or 0) for name in (*MOE_FIELDS, "num_experts_per_tok")},
        )

    def config_values(self, target: Architecture) -> dict:
        """The config attributes that describe ``target`` in this family's spelling."""
        return {attr: getattr(target, name) for name, attr in self.config_names.items() if attr is not None}

    def biases(self, config) -> tuple[bool, bool, bool]:
        """Whether q/k/v, o and the MLP projections carry biases in this config."""
        def flag(rule: bool | str) -> bool:
            return rule if isinstance(rule, bool) else bool(getattr(config, rule, False))
        return flag(self.qkv_bias), flag(self.o_bias), flag(self.mlp_bias)

    def check_config(self, config) -> None:
        """Raise for configs of this family that compactlm cannot prune (mixed dense/MoE layers) or that describe no
        working model (a router choosing more experts than there are)."""
        if self.experts is None:
            return
        experts_name, top_k_name = self.config_names["num_experts"], self.config_names["num_experts_per_tok"]
        experts, top_k = getattr(config, experts_name, None), getattr(config, top_k_name, None)
        if isinstance(experts, int) and isinstance(top_k, int) and top_k > experts:
            raise CompactLMError(
                f"This {self.model_type} config routes each token to {top_k_name}={top_k} experts, but has only "
                f"{experts_name}={experts}; expected {top_k_name} <= {experts_name}. Fix config.json (the checkpoint's "
                f"released values).")
        dense = list(getattr(config, "mlp_only_layers", None) or [])
        step = getattr(config, "decoder_sparse_step", 1) or 1
        if dense or step != 1:
            raise CompactLMError(
                f"This {self.model_type} model mixes dense and MoE layers (mlp_only_layers={dense}, "
                f"decoder_sparse_step={step}); compactlm prunes models whose every layer is MoE. "
                f"Use a checkpoint with decoder_sparse_step=1 and mlp_only_layers=[] (as released).")

    def check_target(self, target: Architecture) -> None:
        """Raise if transformers would refuse to save/load this family at ``target``'s sizes.

        Config classes carry their own validators (transformers 5's ``LlamaConfig`` demands
        ``hidden_size % num_attention_heads == 0`` even with an explicit ``head_dim``); asking
        the real config class keeps us in step with whatever version is installed.
        """

        if target.is_moe and target.num_experts_per_tok > target.num_experts:
            raise CompactLMError(
                f"num_experts={target.num_experts} keeps fewer experts than the router's top-k "
                f"(num_experts_per_tok={target.num_experts_per_tok}); keep at least {target.num_experts_per_tok}.")
        if target.is_moe and (target.hidden_size % 8 or target.moe_intermediate_size % 8):
            raise CompactLMError(
                f"hidden_size={target.hidden_size} and moe_intermediate_size={target.moe_intermediate_size} must be "
                f"multiples of 8 for a mixture-of-experts student: transformers' grouped-GEMM expert kernel needs the "
                f"expert tensors' rows aligned to 16 bytes. Choose sizes that are multiples of 8.")
        if self.hidden_is_heads_x_head_dim and target.hidden_size != target.num_attention_heads * target.head_dim:
            heads = target.hidden_size // target.head_dim
            raise CompactLMError(
                f"{self.model_type}'s modelling code sizes its q/k norms by hidden_size, so a {self.model_type} model "
                f"needs hidden_size = num_attention_heads x head_dim; got hidden_size={target.hidden_size} with "
                f"{target.num_attention_heads} heads of {target.head_dim}. Prune them together, e.g. --hidden-size "
                f"{max(heads, 1) * target.head_dim} --num-attention-heads {max(heads, 1)}.")
        fields = self.config_values(target)
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
        for attr, value in self.config_values(target).items():
            setattr(new, attr, value)   # head_dim explicit: hidden pruning breaks hidden = heads * head_dim
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
