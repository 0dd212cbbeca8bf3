"""Size of the GGUF file :func:`.gguf.export_gguf` would write for an architecture, without building the model.

The deployed-memory search sizes hundreds of candidates in a GGUF type; each count here is arithmetic
on the candidate's :class:`~compactlm.arch.Architecture` and facts of the teacher's config, read once
(:class:`GGUFSizer`). It follows the exporter step by step: the tensors of transformers' state dict (a
tied LM head left out, or written again as ``output.weight`` where the llama.cpp arch requires an
output; fused experts split per projection), named by the same ``TensorNameMap``, typed by the same
rule (:func:`.gguf.gguf_tensor_type`), plus the family's generated tensors (Llama 3 ``rope_freqs``,
LongRoPE factors). The result is the tensor data of the file in bytes (what ``GGUFReader`` reports as
each tensor's ``n_bytes``, summed): the weights llama.cpp maps; the header, the tokenizer and the
32-byte alignment between tensors are not counted. Tested equal to the written files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache

import gguf
from gguf import GGMLQuantizationType

from ..arch import Architecture, adapter_for
from ..arch.base import ArchAdapter
from ..errors import CompactLMError
from .gguf import _gguf_name, check_quant, expert_parts, gguf_tensor_type, quant_types
from .gguf_families import FAMILIES, GGUFFamily, layout_for

Shape = tuple[int, ...]
LAYER = "0"   # layer tensors are sized once, as those of layer 0, and counted num_hidden_layers times


def tensor_bytes(shape: Shape, qtype: GGMLQuantizationType) -> int:
    """Bytes of a tensor of ``shape`` stored in ``qtype``: whole blocks of ``GGML_QUANT_SIZES`` along the rows."""
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * type_size


def state_dict_shapes(arch: Architecture, adapter: ArchAdapter, biases: tuple[bool, bool, bool]
                      ) -> tuple[dict[str, Shape], dict[str, Shape]]:
    """(model-level tensors, tensors of decoder layer 0) of transformers' state dict for ``arch``, names as it spells
    them; the LM head only when untied. ``biases``: the adapter's (q/k/v, o, MLP) switches of the config."""
    e, d = arch.hidden_size, arch.head_dim
    q, kv = arch.num_attention_heads * d, arch.num_key_value_heads * d
    qkv_bias, o_bias, mlp_bias = biases
    layer: dict[str, Shape] = {}

    def linear(name: str, rows: int, cols: int, bias: bool) -> None:
        layer[f"{name}.weight"] = (rows, cols)
        if bias:
            layer[f"{name}.bias"] = (rows,)

    if adapter.qkv_proj:
        linear(adapter.qkv_proj, q + 2 * kv, e, qkv_bias)
    else:
        for name, rows in ((adapter.q_proj, q), (adapter.k_proj, kv), (adapter.v_proj, kv)):
            linear(name, rows, e, qkv_bias)
    linear(adapter.o_proj, e, q, o_bias)
    for name in adapter.head_norms:
        layer[f"{name}.weight"] = (d,)
    if adapter.q_projection_norm:
        layer[f"{adapter.q_projection_norm}.weight"] = (q,)
        layer[f"{adapter.k_projection_norm}.weight"] = (kv,)
    if arch.is_moe:
        x, i, s = arch.num_experts, arch.moe_intermediate_size, arch.shared_expert_intermediate_size
        layer[f"{adapter.router}.weight"] = (x, e)
        layer[f"{adapter.experts}.gate_up_proj"] = (x, 2 * i, e)
        layer[f"{adapter.experts}.down_proj"] = (x, e, i)
        if adapter.shared_expert and s:
            for name, rows, cols in (("gate_proj", s, e), ("up_proj", s, e), ("down_proj", e, s)):
                linear(f"{adapter.shared_expert}.{name}", rows, cols, False)
            if adapter.shared_expert_gate:
                layer[f"{adapter.shared_expert_gate}.weight"] = (1, e)
    elif arch.intermediate_size:
        f = arch.intermediate_size
        if adapter.gate_up_proj:
            linear(adapter.gate_up_proj, 2 * f, e, mlp_bias)
        else:
            if adapter.gate_proj:
                linear(adapter.gate_proj, f, e, mlp_bias)
            linear(adapter.up_proj, f, e, mlp_bias)
        linear(adapter.down_proj, e, f, mlp_bias)
    for name in adapter.norms:
        layer[f"{name}.weight"] = (e,)
        if adapter.norm_bias:
            layer[f"{name}.bias"] = (e,)
    model: dict[str, Shape] = {f"{adapter.embed_tokens}.weight": (arch.vocab_size, e), f"{adapter.final_norm}.weight": (e,)}
    if adapter.norm_bias:
        model[f"{adapter.final_norm}.bias"] = (e,)
    if not arch.tie_word_embeddings:
        model[f"{adapter.lm_head}.weight"] = (arch.vocab_size, e)
    return model, {f"{adapter.layers}.{LAYER}.{name}": shape for name, shape in layer.items()}


@cache
def _name_map(arch_name: str):
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch_name)
    return gguf.get_tensor_name_map(arch, 1)


@cache
def _llamacpp_names(arch_name: str, hf_name: str) -> tuple[str, ...]:
    """The GGUF name(s) the exporter gives a state-dict tensor: one, or one per projection of fused experts."""
    names = expert_parts(hf_name) if hf_name.endswith((".experts.gate_up_proj", ".experts.down_proj")) else [hf_name]
    return tuple(_gguf_name(_name_map(arch_name), name) for name in names)


def _llamacpp_shapes(hf_name: str, shape: Shape) -> list[Shape]:
    """The shape of each part :func:`_llamacpp_names` names (gate and up each take half of ``gate_up_proj``'s rows)."""
    if hf_name.endswith(".experts.gate_up_proj"):
        half = (shape[0], shape[1] // 2, shape[2])
        return [half, half]
    return [shape]


@dataclass
class GGUFSizer:
    """What of a teacher's config decides its candidates' GGUF files: family, module names, biases, generated
    tensors. Build it once per config (:meth:`of`); :meth:`tensors` and :meth:`bytes` are arithmetic."""

    model_type: str
    family: GGUFFamily
    adapter: ArchAdapter
    biases: tuple[bool, bool, bool]
    config: object = field(repr=False)
    _generated: dict[str, list[tuple[str, Shape]]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, config) -> GGUFSizer:
        model_type = getattr(config, "model_type", None)
        if model_type not in FAMILIES:
            raise CompactLMError(
                f"GGUF sizes: compactlm cannot export model_type='{model_type}' as GGUF (supported: "
                f"{', '.join(sorted(FAMILIES))}). Budget the memory in float32, bfloat16 or float16 weights instead.")
        adapter = adapter_for(config)
        return cls(model_type, FAMILIES[model_type], adapter, adapter.biases(config), config)

    def _generated_tensors(self, family: GGUFFamily) -> list[tuple[str, Shape]]:
        if family.arch not in self._generated:
            made = family.tensors(self.config) if family.tensors else {}
            self._generated[family.arch] = [(name, tuple(data.shape)) for name, data in made.items()]
        return self._generated[family.arch]

    def _parts(self, arch: Architecture) -> tuple[list[tuple[str, Shape]], list[tuple[str, Shape]]]:
        """(model-level, layer-0) tensors as the exporter writes them: GGUF names and shapes."""
        family = layout_for(self.family, arch)
        model_shapes, layer_shapes = state_dict_shapes(arch, self.adapter, self.biases)
        out = []
        for shapes in (model_shapes, layer_shapes):
            named = []
            for hf_name, shape in shapes.items():
                if hf_name == f"{self.adapter.lm_head}.weight" and family.output == "none":
                    continue
                named += zip(_llamacpp_names(family.arch, hf_name), _llamacpp_shapes(hf_name, shape))
            out.append(named)
        model, layer = out
        model += self._generated_tensors(family)
        if arch.tie_word_embeddings and family.output == "required":   # the exporter writes the embedding again
            model.append(("output.weight", (arch.vocab_size, arch.hidden_size)))
        return model, layer

    def tensors(self, arch: Architecture, qtype: GGMLQuantizationType) -> list[tuple[str, Shape, GGMLQuantizationType]]:
        """Every tensor of the file: (GGUF name, shape as transformers orders it, type)."""
        model, layer = self._parts(arch)
        out = [(name, shape, gguf_tensor_type(name, shape, qtype)) for name, shape in model]
        for i in range(arch.num_hidden_layers):
            out += [(name.replace(f"blk.{LAYER}.", f"blk.{i}.", 1), shape, gguf_tensor_type(name, shape, qtype))
                    for name, shape in layer]
        return out

    def bytes(self, arch: Architecture, qtype: GGMLQuantizationType) -> int:
        """Bytes of the file's tensor data."""
        model, layer = self._parts(arch)

        def total(named: list[tuple[str, Shape]]) -> int:
            return sum(tensor_bytes(shape, gguf_tensor_type(name, shape, qtype)) for name, shape in named)

        return total(model) + arch.num_hidden_layers * total(layer)


def gguf_tensor_bytes(arch: Architecture, config, quant: str) -> int:
    """Bytes of the tensor data :func:`.gguf.export_gguf` writes in type ``quant`` (``q8_0``, ``q4_0``, ``f16``, ...)
    for a model of ``arch``'s sizes; ``config`` (the teacher's) gives the family, biases and rope. Builds a
    :class:`GGUFSizer` per call: reuse one to size many candidates."""
    return GGUFSizer.of(config).bytes(arch, quant_types()[check_quant(quant)])


__all__ = ["GGUFSizer", "gguf_tensor_bytes", "state_dict_shapes", "tensor_bytes"]
