"""GGUF export: a student as a single file that llama.cpp (Ollama, LM Studio) runs, optionally quantized.

Written with the ``gguf`` package, the reference writer llama.cpp maintains, following what
llama.cpp's own ``convert_hf_to_gguf.py`` does for each family (:mod:`.gguf_families` holds the
per-family differences, and refuses what llama.cpp would run differently):

- metadata: ``general.*``, the architecture's hyperparameters (``{arch}.block_count``,
  ``embedding_length``, ``feed_forward_length``, ``attention.head_count(_kv)``,
  ``attention.key_length``/``value_length`` = ``head_dim`` — explicit, because a hidden-pruned
  student has ``hidden_size != heads * head_dim`` — ``rope.*``, the norms' epsilon, expert counts),
  then the family's own keys (soft-capping, sliding windows, Granite's multipliers, ...);
- tensors named by the package's ``TensorNameMap`` (``blk.3.attn_q.weight``), transformed as the
  family's converter class does: q/k rows (and biases) permuted into llama.cpp's interleaved rotary
  layout for the ``llama``/``granite`` archs (the inverse of what transformers' GGUF loader undoes;
  a hidden-pruned Qwen2 is written as ``llama``, which sizes q by ``head_dim``), Gemma's
  and Nemotron's ``(1 + w)`` norms stored as ``1 + w``, fused experts split into ``ffn_gate_exps``/
  ``ffn_up_exps``/``ffn_down_exps``; generated tensors (Llama 3 ``rope_freqs``, LongRoPE factors);
- the tokenizer (:mod:`.gguf_vocab`);
- quantization by the package's quantizers: every 2-D and 3-D weight in the chosen type; 1-D
  tensors (norms, biases), norms and MoE routers in F32; a weight whose row length is not a
  multiple of the type's block falls back to F16 (logged), as llama.cpp's converter does.

The file is written under a temporary name next to the target and renamed when complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType, LlamaFileType, quants
from gguf import GGMLQuantizationType as Q

from ..arch import adapter_for
from ..errors import CompactLMError, unknown_name
from ..io import check_output_file
from .gguf_families import (
    FAMILIES,
    GGUFFamily,
    layout_for,
    llama3_rope_factors,
    problems,
    rope_dimensions,
    rope_parameters,
    sliding_layers,
)
from .gguf_vocab import add_tokenizer

logger = logging.getLogger(__name__)

__all__ = ["FAMILIES", "GGUFExport", "GGUFFamily", "check_family", "check_gguf_output", "check_quant", "export_gguf",
           "gguf_path", "gguf_tensor_type", "llama3_rope_factors", "llamacpp_tensors", "permute_for_llamacpp",
           "quant_types"]


@cache
def quant_types() -> dict[str, object]:
    """Types this installed ``gguf`` package can write: those with a quantizer and a llama.cpp file type.

    Returns ``{"f32": GGMLQuantizationType.F32, "q8_0": ..., ...}``, probed rather than listed so
    that a newer ``gguf`` offers its new quantizers without a change here.
    """

    probe = np.linspace(-1, 1, 256 * 2, dtype=np.float32).reshape(2, 256)
    found = {}
    for qtype in GGMLQuantizationType:
        file_type = "ALL_F32" if qtype.name == "F32" else f"MOSTLY_{qtype.name}"
        if file_type not in LlamaFileType.__members__:
            continue
        try:
            quants.quantize(probe, qtype)
        except (NotImplementedError, quants.QuantError):
            continue
        found[qtype.name.lower()] = qtype
    return found


def check_quant(name: str) -> str:
    """``name`` lower-cased if it is a type :func:`quant_types` offers; else a did-you-mean error."""
    types = quant_types()
    if name.lower() not in types:
        raise CompactLMError(str(unknown_name("GGUF type", name, list(types)))
                             + " (K-quants and i-quants: run llama.cpp's llama-quantize on an f16 export)")
    return name.lower()


def check_family(config) -> GGUFFamily:
    """The llama.cpp layout for ``config``; a clear error for a family, or a model of one, that llama.cpp
    cannot run as transformers does (:func:`.gguf_families.problems` lists why)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise CompactLMError(
            f"GGUF export does not support model_type='{model_type}'. Supported: {', '.join(sorted(FAMILIES))}. "
            f"Save the Hugging Face checkpoint and convert it with llama.cpp's convert_hf_to_gguf.py if it knows the family.")
    adapter = adapter_for(config)
    arch = adapter.architecture(config)
    family = layout_for(FAMILIES[model_type], arch)
    if family is not FAMILIES[model_type]:
        logger.info("GGUF export: %s with hidden_size=%d != %d heads x head_dim %d, which llama.cpp's %s sizes as "
                    "hidden x hidden: written as llama.cpp's %s arch", model_type, arch.hidden_size,
                    arch.num_attention_heads, arch.head_dim, FAMILIES[model_type].arch, family.arch)
    found = problems(family, config, arch, adapter.biases(config))
    if found:
        raise CompactLMError(f"GGUF export: llama.cpp's {family.arch} cannot run this {model_type} model as "
                             f"transformers does: {'; '.join(found)}.")
    window = getattr(config, "sliding_window", None)
    if not family.sliding_window and any(sliding_layers(config)):
        logger.warning("GGUF export: %s uses a %s-token sliding window that llama.cpp's %s does not apply; "
                       "its outputs equal transformers' only on sequences up to %s tokens",
                       model_type, window, family.arch, window)
    return family


def check_gguf_output(out: str | Path, overwrite: bool, quant: str = "q8_0", inputs: Iterable = ()) -> Path:
    """A ``.gguf`` file path in a writable place, neither one of the ``inputs`` (the model, a tokenizer GGUF) nor
    inside an input directory, and not an existing file unless ``overwrite``: any existing file, an earlier
    export's too, since a GGUF file does not say who wrote it."""

    out = Path(out)
    if out.suffix != ".gguf" or out.is_dir():
        raise CompactLMError(f"GGUF output '{out}': expected a file path ending in .gguf, e.g. student.{quant}.gguf.")
    return check_output_file(out, inputs=inputs, overwrite=overwrite, flag="--gguf")


@dataclass
class GGUFExport:
    """What :func:`export_gguf` wrote."""

    path: Path
    quant: str
    bytes: int
    arch: str
    tensors: int
    tokenizer: str
    f16_fallback: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "quant": self.quant, "bytes": self.bytes, "arch": self.arch,
                "tensors": self.tensors, "tokenizer": self.tokenizer, "f16_fallback": self.f16_fallback}


def gguf_path(directory: str | Path, quant: str, stem: str = "student") -> Path:
    """The conventional file name: ``<dir>/student.q8_0.gguf``."""
    return Path(directory) / f"{stem}.{quant.lower()}.gguf"


def export_gguf(model, out: str | Path, *, quant: str = "q8_0", name: str | None = None,
                gguf_source: Path | None = None, hf_dir: Path | None = None, tokenizer_pre: str | None = None,
                overwrite: bool = False) -> GGUFExport:
    """Write ``model`` (a supported ``PreTrainedModel``) to the GGUF file ``out``.

    Args:
        quant: one of :func:`quant_types` (``f32``, ``f16``, ``bf16``, ``q8_0``, ``q4_0``, ...).
        name: ``general.name`` (default: the config's ``_name_or_path``).
        gguf_source: a GGUF file whose tokenizer fields are copied (the teacher's).
        hf_dir: a checkpoint directory whose ``tokenizer.json`` is converted when there is no GGUF source.
        tokenizer_pre: llama.cpp's pre-tokenizer name for a converted byte-level BPE tokenizer.
    """

    quant = check_quant(quant)
    family = check_family(model.config)
    out = check_gguf_output(out, overwrite, quant)
    out.parent.mkdir(parents=True, exist_ok=True)

    config = model.config
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, family.arch)
    try:
        arch = adapter_for(config).architecture(config)
        _add_metadata(writer, config, family, arch, name or str(getattr(config, "_name_or_path", "") or "student"))
        writer.add_file_type(int(gguf.LlamaFileType["ALL_F32" if quant == "f32" else f"MOSTLY_{quant.upper()}"]))
        source = add_tokenizer(writer, config.vocab_size, gguf_source=gguf_source, hf_dir=hf_dir,
                               tokenizer_pre=tokenizer_pre)
        fallback = _add_tensors(writer, model, family, quant_types()[quant])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    result = GGUFExport(path=out, quant=quant, bytes=out.stat().st_size, arch=family.arch,
                        tensors=len(writer.tensors[0]) if writer.tensors else 0, tokenizer=source,
                        f16_fallback=fallback)
    logger.info("wrote %s (%s, %.1f MB, tokenizer %s)", out, quant, result.bytes / 1e6, source)
    return result


# ---- metadata --------------------------------------------------------------------------------

def _add_metadata(writer, config, family: GGUFFamily, arch, name: str) -> None:
    """The keys every converter writes (``TextModel.set_gguf_parameters``), then the family's own.

    ``key_length``/``value_length`` and ``rope.dimension_count`` are explicit: a hidden-pruned
    student has ``hidden_size != heads * head_dim``, and llama.cpp would otherwise derive them from
    ``hidden_size / heads``.
    """
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    if getattr(config, "intermediate_size", None) is not None:
        writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(arch.num_attention_heads)
    writer.add_head_count_kv(arch.num_key_value_heads)
    writer.add_key_length(arch.head_dim)
    writer.add_value_length(arch.head_dim)
    writer.add_rope_dimension_count(rope_dimensions(config))
    writer.add_layer_norm_rms_eps(float(getattr(config, family.eps)))
    _add_rope_scaling(writer, config)
    if arch.is_moe:
        writer.add_expert_count(arch.num_experts)
        writer.add_expert_used_count(arch.num_experts_per_tok)
    if family.keys is not None:
        family.keys(writer, config, arch)


def _add_rope_scaling(writer, config) -> None:
    """Rope base and linear/YaRN scaling of the (global) attention layers, as ``TextModel`` writes them."""
    rope = rope_parameters(config)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope["rope_type"] == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope.get("original_max_position_embeddings",
                                                          config.max_position_embeddings)))
        for key, add in (("extrapolation_factor", writer.add_rope_scaling_yarn_ext_factor),
                         ("attention_factor", writer.add_rope_scaling_yarn_attn_factor),
                         ("beta_fast", writer.add_rope_scaling_yarn_beta_fast),
                         ("beta_slow", writer.add_rope_scaling_yarn_beta_slow)):
            if rope.get(key) is not None:
                add(float(rope[key]))


# ---- tensors ---------------------------------------------------------------------------------

def permute_for_llamacpp(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q/k projection from transformers' half-split rotary layout to llama.cpp's interleaved one.

    ``weight``: (n_head * head_dim, in) or a bias (n_head * head_dim,). Inverse of transformers'
    ``LlamaTensorProcessor._reverse_permute_weights``.
    """
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _gguf_name(name_map, hf_name: str) -> str:
    new = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if new is None:
        raise CompactLMError(f"GGUF export: no llama.cpp name for tensor '{hf_name}'. The family's layout is not "
                             f"what the GGUF writer expects; please report it.")
    return new


def _transformed(family: GGUFFamily, config, hf_name: str, data: np.ndarray) -> np.ndarray:
    """One tensor as llama.cpp reads it: q/k rows (weights and biases) permuted for "NORM" rope, ``1 + w`` norms
    pre-added."""
    if family.permute_qk and (".q_proj." in hf_name or ".k_proj." in hf_name):
        heads = config.num_attention_heads if ".q_proj." in hf_name else \
            (getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
        data = permute_for_llamacpp(data, heads)
    if family.norm_offset and hf_name.endswith("norm.weight"):
        data = data + np.float32(family.norm_offset)
    return data


def _split_experts(hf_name: str, data: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """transformers 5's fused experts as llama.cpp's three stacked tensors (``Qwen2MoeModel.modify_tensors``).

    ``gate_up_proj`` (experts, 2 * I, hidden) is [gate | up] along its rows; ``down_proj`` is already
    (experts, hidden, I), which GGUF's reversed shape makes llama.cpp's {I, hidden, experts}.
    """
    parts = np.split(data, 2, axis=1) if hf_name.endswith(".gate_up_proj") else [data]
    return list(zip(expert_parts(hf_name), parts))


def expert_parts(hf_name: str) -> list[str]:
    """The per-projection names a fused expert tensor is split into: ``gate_up_proj`` -> gate and up (each half of
    its rows, dimension 1), ``down_proj`` -> down (whole)."""
    prefix = hf_name.rsplit(".", 1)[0]
    if hf_name.endswith(".gate_up_proj"):
        return [f"{prefix}.gate_proj.weight", f"{prefix}.up_proj.weight"]
    return [f"{prefix}.down_proj.weight"]


def llamacpp_tensors(model, family: GGUFFamily) -> list[tuple[str, np.ndarray]]:
    """Every tensor of ``model`` as llama.cpp's converter writes it: (GGUF name, float32 array)."""
    config = model.config
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == family.arch)
    name_map = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out = list(family.tensors(config).items()) if family.tensors else []
    for hf_name, tensor in model.state_dict().items():
        if hf_name.endswith("rotary_emb.inv_freq") or (hf_name == "lm_head.weight" and (tied or family.output == "none")):
            continue
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if hf_name.endswith((".experts.gate_up_proj", ".experts.down_proj")):
            out += [(_gguf_name(name_map, name), part) for name, part in _split_experts(hf_name, data)]
            continue
        if hf_name.endswith(".shared_expert_gate.weight"):
            # (1, hidden) -> (hidden,): llama.cpp reads {n_embd}, published files and transformers' loader have
            # it 1-D (older converters squeezed every tensor); the bytes are the same
            data = data.reshape(-1)
        out.append((_gguf_name(name_map, hf_name), _transformed(family, config, hf_name, data)))
    if tied and family.output == "required":   # the arch loads no output without the tensor: duplicate it
        embedding = next(data for name, data in out if name == "token_embd.weight")
        out.append(("output.weight", embedding))
    return out


def _keeps_f32(name: str, ndim: int) -> bool:
    """Tensors llama.cpp's converter never quantizes: 1-D ones, norms, and MoE routers."""
    return ndim <= 1 or name.endswith("_norm.weight") or name.split(".")[-2] in ("ffn_gate_inp", "ffn_gate_inp_shexp")


def gguf_tensor_type(name: str, shape: tuple[int, ...], qtype: GGMLQuantizationType) -> GGMLQuantizationType:
    """The type :func:`export_gguf` writes the tensor ``name`` (its GGUF name) of ``shape`` in, for the chosen
    ``qtype``: F32 for 1-D tensors, norms and MoE routers; F16 for a weight whose row length (last dimension) is not a
    multiple of ``qtype``'s block; else ``qtype``. The one rule the exporter and :mod:`.gguf_size` share."""
    if _keeps_f32(name, len(shape)):
        return Q.F32
    if shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] != 0:
        return Q.F16
    return qtype


def _add_tensors(writer, model, family: GGUFFamily, qtype) -> list[str]:
    fallback = []
    for name, data in llamacpp_tensors(model, family):
        target = gguf_tensor_type(name, data.shape, qtype)
        if target == Q.F16 and qtype != Q.F16:
            fallback.append(name)
        if target == Q.F32:
            writer.add_tensor(name, np.ascontiguousarray(data))
        elif target == Q.F16:
            writer.add_tensor(name, data.astype(np.float16), raw_dtype=Q.F16)
        else:
            writer.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(data), target), raw_dtype=target)
    if fallback:
        logger.warning("GGUF export: %d tensor(s) kept in F16: row length not a multiple of the %s block (%s)",
                       len(fallback), qtype.name, ", ".join(fallback[:4]) + (" ..." if len(fallback) > 4 else ""))
    return fallback
