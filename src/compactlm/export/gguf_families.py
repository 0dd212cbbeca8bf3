"""Per-family GGUF layout: what llama.cpp's ``convert_hf_to_gguf.py`` does differently for each family.

One :class:`GGUFFamily` per transformers ``model_type`` says which llama.cpp architecture runs it and
what its converter class (``LlamaModel``, ``Gemma2Model``, ``Qwen2MoeModel``, ...) changes on the way:
q/k rows permuted for llama.cpp's interleaved rotary pairs, norms stored as ``1 + w``, an output matrix
the architecture requires or never reads, family metadata keys and generated tensors. It also says
what the architecture's C++ graph hard-codes (activation, which biases it reads, whether q/o are
``hidden x hidden``, whether the router renormalises its top-k weights, the attention scale), so that
a model llama.cpp would run differently from transformers is refused with the reason
(:func:`problems`) instead of being written as a file that loads and computes something else — or,
where another arch runs it exactly (a hidden-pruned Qwen2 as ``llama``), written as that arch
(:func:`layout_for`).

Checked against llama.cpp's converter (``conversion/{llama,qwen,gemma,phi,olmo,granite,nemotron}.py``)
and loader (``src/models/<arch>.cpp``) as vendored by llama-cpp-python 0.3.36.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# The llama.cpp graphs' feed-forward activations, by transformers' name for them.
SILU, GELU_TANH, RELU2 = "silu", "gelu_pytorch_tanh", "relu2"


@dataclass(frozen=True)
class GGUFFamily:
    """How one transformers ``model_type`` is laid out for one llama.cpp architecture."""

    arch: str                                   # llama.cpp's general.architecture
    permute_qk: bool = False                    # "NORM" rope (llama, granite): interleaved rotary pairs
    norm_offset: float = 0.0                    # HF norms compute (offset + w) * x; llama.cpp reads w + offset
    activation: str = SILU                      # the MLP activation llama.cpp's graph hard-codes
    biases: tuple[bool, bool, bool] = (True, False, False)   # q/k/v, o, MLP biases the arch loads
    hidden_is_heads: bool = False               # the arch sizes q and o as hidden x hidden
    output: str = "optional"                    # lm_head: "optional", "required" (tied: written anyway), "none"
    norm_topk: bool | None = None               # MoE: whether the arch renormalises the top-k router weights
    rope_types: tuple[str, ...] = ("default", "linear", "yarn")
    eps: str = "rms_norm_eps"                   # the config field of the norms' epsilon
    sliding_window: bool = False                # the arch runs per-layer sliding-window attention
    keys: Callable | None = None                # (writer, config, arch) -> None: family metadata
    tensors: Callable | None = None             # (config) -> {gguf name: f32 array}: generated tensors
    checks: Callable | None = None              # (config, arch) -> [reason]: what else the arch hard-codes
    hidden_pruned: GGUFFamily | None = None     # hidden_is_heads archs: the layout a hidden-pruned model gets


# ---- config readers ---------------------------------------------------------------------------

def rope_parameters(config, layer_type: str = "full_attention") -> dict:
    """The rope settings of ``layer_type``'s layers.

    transformers 5 keeps them in ``rope_parameters`` (one dict per attention type for Gemma 3),
    older configs in ``rope_theta``/``rope_scaling``.
    """
    params = dict(getattr(config, "rope_parameters", None) or {})
    if isinstance(params.get(layer_type), dict):
        params = dict(params[layer_type])
    scaling = getattr(config, "rope_scaling", None)
    if isinstance(scaling, dict) and not isinstance(scaling.get(layer_type), dict):
        params = {**scaling, **params}
        params.setdefault("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if "rope_theta" not in params and getattr(config, "rope_theta", None) is not None:
        params["rope_theta"] = config.rope_theta
    params.setdefault("rope_type", "default")
    return params


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_dimensions(config) -> int:
    """Rotated channels per head: ``int(head_dim * partial_rotary_factor)``, as transformers computes them."""
    factor = rope_parameters(config).get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))
    return int(head_dim(config) * (factor or 1.0))


def sliding_layers(config) -> list[bool]:
    """Which layers transformers runs with sliding-window attention (``layer_types`` when the config has it)."""
    types = getattr(config, "layer_types", None)
    if types:
        return [t == "sliding_attention" for t in types]
    window = getattr(config, "sliding_window", None)
    return [bool(window) and window < config.max_position_embeddings] * config.num_hidden_layers


def activation(config) -> str | None:
    return getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)


# ---- generated tensors ------------------------------------------------------------------------

def llama3_rope_factors(config) -> np.ndarray:
    """Per-frequency divisors of Llama 3 rope scaling, as llama.cpp's ``rope_freqs`` tensor holds them."""
    rope = rope_parameters(config)
    dim = head_dim(config)
    base = float(rope.get("rope_theta", 10000.0))
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_context = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_context / low, old_context / high
    factors = []
    for freq in 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim):
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_context / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _rope_freqs(config) -> dict:
    """``LlamaModel.generate_extra_tensors``: Llama 3 rope scaling as the ``rope_freqs`` tensor."""
    if rope_parameters(config)["rope_type"] != "llama3":
        return {}
    return {"rope_freqs.weight": llama3_rope_factors(config)}


def _longrope_factors(config) -> dict:
    """``Phi3MiniModel.generate_extra_tensors``: LongRoPE's per-frequency factors, one tensor each."""
    rope = rope_parameters(config)
    if rope["rope_type"] != "longrope":
        return {}
    return {"rope_factors_long.weight": np.asarray(rope["long_factor"], dtype=np.float32),
            "rope_factors_short.weight": np.asarray(rope["short_factor"], dtype=np.float32)}


# ---- family metadata --------------------------------------------------------------------------

def _gemma2_keys(writer, config, arch) -> None:
    """``Gemma2Model.set_gguf_parameters``, plus the per-layer window pattern (a depth-pruned student's
    layer_types need not alternate as llama.cpp's default pattern of 2 assumes)."""
    writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping))
    writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    writer.add_sliding_window(int(config.sliding_window))
    writer.add_sliding_window_pattern(sliding_layers(config))


def _gemma3_keys(writer, config, arch) -> None:
    """``Gemma3Model.set_gguf_parameters``: the local layers' window and rope base; the pattern per layer
    (llama.cpp's default is 5 local : 1 global, which a depth-pruned student no longer follows)."""
    if getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    sliding = sliding_layers(config)
    if getattr(config, "sliding_window", None) and any(sliding):
        writer.add_sliding_window(int(config.sliding_window))
        writer.add_sliding_window_pattern(sliding)
        writer.add_rope_freq_base_swa(float(rope_parameters(config, "sliding_attention").get("rope_theta", 10000.0)))


def _granite_keys(writer, config, arch) -> None:
    """``GraniteModel.set_gguf_parameters``: the four config multipliers under llama.cpp's *_scale names."""
    for value, add in ((config.attention_multiplier, writer.add_attention_scale),
                       (config.embedding_multiplier, writer.add_embedding_scale),
                       (config.residual_multiplier, writer.add_residual_scale),
                       (config.logits_scaling, writer.add_logit_scale)):
        if value:
            add(float(value))


def _nemotron_keys(writer, config, arch) -> None:
    """``NemotronModel.set_gguf_parameters``: LayerNorm (not RMSNorm) epsilon."""
    writer.add_layer_norm_eps(float(config.norm_eps))


def _phi3_keys(writer, config, arch) -> None:
    """``Phi3MiniModel.set_gguf_parameters`` and the LongRoPE attention factor of ``generate_extra_tensors``."""
    rope = rope_parameters(config)
    original = rope.get("original_max_position_embeddings",
                        getattr(config, "original_max_position_embeddings", None) or config.max_position_embeddings)
    writer.add_rope_scaling_orig_ctx_len(int(original))
    writer.add_sliding_window(int(getattr(config, "sliding_window", None) or 0))
    if rope["rope_type"] == "longrope":
        writer.add_rope_scaling_attn_factors(_longrope_attention_factor(config, rope, original))


def _longrope_attention_factor(config, rope: dict, original: int) -> float:
    """transformers' LongRoPE cos/sin scale (the converter's formula when the config gives none)."""
    if rope.get("attention_factor") is not None:
        return float(rope["attention_factor"])
    factor = rope.get("factor") or config.max_position_embeddings / original
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


def _qwen_moe_keys(writer, config, arch) -> None:
    """``Qwen2MoeModel.set_gguf_parameters``: the experts' (and the shared expert's) width."""
    writer.add_expert_feed_forward_length(arch.moe_intermediate_size)
    if arch.shared_expert_intermediate_size:
        writer.add_expert_shared_feed_forward_length(arch.shared_expert_intermediate_size)


# ---- what each llama.cpp graph hard-codes -----------------------------------------------------

def _gemma_attention_scale_checks(config, n_layers_27b: int) -> list[str]:
    """llama.cpp scales queries by 1/sqrt(head_dim), or 1/sqrt(hidden/heads) when the layer count is the
    27B model's; transformers by 1/sqrt(query_pre_attn_scalar). A student must keep them equal."""
    heads = config.num_attention_heads
    expected = config.hidden_size // heads if config.num_hidden_layers == n_layers_27b else head_dim(config)
    if config.query_pre_attn_scalar != expected:
        return [f"query_pre_attn_scalar={config.query_pre_attn_scalar}, but llama.cpp scales attention by "
                f"1/sqrt({expected}) for {config.num_hidden_layers} layers of head_dim {head_dim(config)}"]
    return []


def _gemma2_checks(config, arch) -> list[str]:
    problems = _gemma_attention_scale_checks(config, n_layers_27b=46)
    for name in ("attn_logit_softcapping", "final_logit_softcapping", "sliding_window"):
        if not getattr(config, name, None):
            problems.append(f"{name} is unset, but llama.cpp's gemma2 always applies it (its defaults differ)")
    return problems


def _gemma3_checks(config, arch) -> list[str]:
    problems = _gemma_attention_scale_checks(config, n_layers_27b=62)
    if getattr(config, "attn_logit_softcapping", None):
        problems.append("attn_logit_softcapping is set; llama.cpp's gemma3 has no attention soft-capping")
    if getattr(config, "use_bidirectional_attention", False):
        problems.append("use_bidirectional_attention=True; llama.cpp's gemma3 attends causally")
    if rope_parameters(config, "sliding_attention")["rope_type"] != "default":
        problems.append("the sliding layers' rope is scaled; llama.cpp scales only the global layers' rope")
    return problems


def _olmoe_checks(config, arch) -> list[str]:
    problems = []
    if arch.num_key_value_heads != arch.num_attention_heads:
        problems.append(f"{arch.num_key_value_heads} KV heads for {arch.num_attention_heads} query heads; llama.cpp's "
                        f"olmoe sizes k_norm by hidden_size, so it needs as many KV heads as query heads")
    if getattr(config, "clip_qkv", None) is not None:
        problems.append(f"clip_qkv={config.clip_qkv}; llama.cpp's olmoe does not clip q/k/v")
    return problems


_LLAMA_ROPE = ("default", "linear", "yarn", "llama3")

# llama.cpp's llama arch: q/o sized by heads x head_dim (key_length), every bias optional.
_LLAMA = GGUFFamily("llama", permute_qk=True, biases=(True, True, True), rope_types=_LLAMA_ROPE, tensors=_rope_freqs)

# model_type -> llama.cpp layout. Mistral and Mixtral are llama.cpp's "llama" (as its converter
# registers them); Mixtral's experts go into the same arch's ffn_*_exps tensors. A hidden-pruned
# Qwen2 (hidden_size != heads x head_dim, which llama.cpp's qwen2 cannot size) is written as llama
# with its q/k/v biases: the same network in llama.cpp's other rotary layout.
FAMILIES: dict[str, GGUFFamily] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "mixtral": GGUFFamily("llama", permute_qk=True, biases=(True, True, False), norm_topk=True,
                          rope_types=_LLAMA_ROPE, tensors=_rope_freqs),
    "granite": GGUFFamily("granite", permute_qk=True, biases=(True, True, True), rope_types=_LLAMA_ROPE,
                          keys=_granite_keys, tensors=_rope_freqs),
    "qwen2": GGUFFamily("qwen2", hidden_is_heads=True, hidden_pruned=_LLAMA),
    "qwen3": GGUFFamily("qwen3"),
    "qwen2_moe": GGUFFamily("qwen2moe", hidden_is_heads=True, output="required", norm_topk=False,
                            keys=_qwen_moe_keys),
    "qwen3_moe": GGUFFamily("qwen3moe", norm_topk=True, keys=_qwen_moe_keys),
    "olmo2": GGUFFamily("olmo2", hidden_is_heads=True, output="required"),
    "olmoe": GGUFFamily("olmoe", hidden_is_heads=True, output="required", norm_topk=False, checks=_olmoe_checks),
    "phi3": GGUFFamily("phi3", hidden_is_heads=True, rope_types=("default", "longrope"), keys=_phi3_keys,
                       tensors=_longrope_factors),
    "nemotron": GGUFFamily("nemotron", hidden_is_heads=True, norm_offset=1.0, activation=RELU2,
                           biases=(True, True, True), output="required", rope_types=("default", "linear"),
                           eps="norm_eps", keys=_nemotron_keys),
    "gemma2": GGUFFamily("gemma2", norm_offset=1.0, activation=GELU_TANH, output="none",
                         rope_types=("default", "linear"), sliding_window=True, keys=_gemma2_keys,
                         checks=_gemma2_checks),
    "gemma3_text": GGUFFamily("gemma3", norm_offset=1.0, activation=GELU_TANH, rope_types=("default", "linear"),
                              sliding_window=True, keys=_gemma3_keys, checks=_gemma3_checks),
}


def heads_fill_hidden(arch) -> bool:
    """Whether q and o are ``hidden x hidden`` (``heads x head_dim == hidden_size``), as before hidden pruning."""
    return arch.num_attention_heads * arch.head_dim == arch.hidden_size


def layout_for(family: GGUFFamily, arch) -> GGUFFamily:
    """``family``, or its ``hidden_pruned`` layout when the model's q/o are not ``hidden x hidden``.

    Like llama.cpp's converter, a model whose family arch can hold it keeps that arch (Qwen2 stays
    qwen2); only a shape the arch cannot size moves to the fallback.
    """
    if family.hidden_pruned is not None and not heads_fill_hidden(arch):
        return family.hidden_pruned
    return family


def problems(family: GGUFFamily, config, arch, biases: tuple[bool, bool, bool]) -> list[str]:
    """Why llama.cpp would compute something else than transformers for ``config`` (empty: it would not).

    ``arch`` is compactlm's :class:`~compactlm.arch.Architecture` of the config, ``biases`` the
    adapter's (q/k/v, o, MLP) bias switches.
    """
    found = []
    rope_type = rope_parameters(config)["rope_type"]
    if rope_type not in family.rope_types:
        found.append(f"rope_type '{rope_type}' has no {family.arch} GGUF encoding (supported: "
                     f"{', '.join(family.rope_types)})")
    if activation(config) != family.activation:
        found.append(f"activation '{activation(config)}', but llama.cpp's {family.arch} uses {family.activation}")
    for part, has, read in zip(("q/k/v", "o_proj", "MLP"), biases, family.biases):
        if has and not read:
            found.append(f"{part} biases, which llama.cpp's {family.arch} does not read")
    if family.hidden_is_heads and not heads_fill_hidden(arch):
        found.append(f"hidden_size={arch.hidden_size} != num_attention_heads x head_dim = {arch.num_attention_heads} "
                     f"x {arch.head_dim}; llama.cpp's {family.arch} sizes q and o as hidden x hidden (prune heads "
                     f"and hidden together, or keep both)")
    if family.output == "none" and not arch.tie_word_embeddings:
        found.append(f"an untied lm_head; llama.cpp's {family.arch} always reuses the token embedding")
    if family.norm_topk is not None and bool(getattr(config, "norm_topk_prob", family.norm_topk)) != family.norm_topk:
        found.append(f"norm_topk_prob={config.norm_topk_prob}, but llama.cpp's {family.arch} "
                     f"{'always' if family.norm_topk else 'never'} renormalises the top-k router weights")
    if family.checks is not None:
        found += family.checks(config, arch)
    return found
