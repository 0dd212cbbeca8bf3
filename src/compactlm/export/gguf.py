"""GGUF export: a student as a single file that llama.cpp (Ollama, LM Studio) runs, optionally quantized.

Written with the ``gguf`` package, the reference writer llama.cpp maintains, following what
llama.cpp's own ``convert_hf_to_gguf.py`` does for each family:

- metadata: ``general.*``, the architecture's hyperparameters (``{arch}.block_count``,
  ``embedding_length``, ``feed_forward_length``, ``attention.head_count(_kv)``,
  ``attention.key_length``/``value_length`` = ``head_dim`` — explicit, because a hidden-pruned
  student has ``hidden_size != heads * head_dim`` — ``rope.*``, ``layer_norm_rms_epsilon``);
- tensors named by the package's ``TensorNameMap`` (``blk.3.attn_q.weight``); for the ``llama``
  architecture the q/k rows are permuted into llama.cpp's interleaved rotary layout (the
  inverse of what transformers' GGUF loader undoes); Llama 3 rope scaling becomes the
  ``rope_freqs`` tensor;
- the tokenizer (:mod:`.gguf_vocab`);
- quantization by the package's quantizers: every 2-D weight in the chosen type, 1-D tensors
  (norms, biases) in F32, and a weight whose row length is not a multiple of the type's block
  falls back to F16 (logged), as llama.cpp's converter does.

The file is written under a temporary name next to the target and renamed when complete.
"""

from __future__ import annotations

import contextlib
import logging
import math
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

from ..errors import CompactLMError, unknown_name
from ..io import check_output_file
from .gguf_vocab import add_tokenizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GGUFFamily:
    """How one transformers ``model_type`` maps to a llama.cpp architecture."""

    arch: str               # llama.cpp's general.architecture
    permute_qk: bool        # llama.cpp's llama arch uses interleaved (GPT-J style) rotary pairs


# model_type -> llama.cpp architecture. Mistral is llama.cpp's "llama" (as its converter does).
FAMILIES: dict[str, GGUFFamily] = {
    "llama": GGUFFamily("llama", permute_qk=True),
    "mistral": GGUFFamily("llama", permute_qk=True),
    "qwen2": GGUFFamily("qwen2", permute_qk=False),
    "qwen3": GGUFFamily("qwen3", permute_qk=False),
}


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
    """The llama.cpp architecture for ``config``; a clear error for a family it cannot express."""
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise CompactLMError(
            f"GGUF export does not support model_type='{model_type}'. Supported: {', '.join(sorted(FAMILIES))}. "
            f"Save the Hugging Face checkpoint and convert it with llama.cpp's convert_hf_to_gguf.py if it knows the family.")
    rope = _rope_parameters(config)
    if rope.get("rope_type", "default") not in ("default", "linear", "llama3", "yarn"):
        raise CompactLMError(f"GGUF export: rope_type '{rope['rope_type']}' has no GGUF encoding here; supported: "
                             f"default, linear, llama3, yarn.")
    return FAMILIES[model_type]


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
        _add_metadata(writer, config, family, name or str(getattr(config, "_name_or_path", "") or "student"))
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

def _rope_parameters(config) -> dict:
    """transformers 5 keeps rope settings in ``rope_parameters``; older configs in rope_theta/rope_scaling."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    scaling = getattr(config, "rope_scaling", None)
    if isinstance(scaling, dict):
        params = {**scaling, **params}
        params.setdefault("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if "rope_theta" not in params and getattr(config, "rope_theta", None) is not None:
        params["rope_theta"] = config.rope_theta
    params.setdefault("rope_type", "default")
    return params


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _add_metadata(writer, config, family: GGUFFamily, name: str) -> None:
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_key_length(_head_dim(config))
    writer.add_value_length(_head_dim(config))
    writer.add_rope_dimension_count(_head_dim(config))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = _rope_parameters(config)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope["rope_type"] == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope.get("original_max_position_embeddings",
                                                          config.max_position_embeddings)))


def llama3_rope_factors(config) -> np.ndarray:
    """Per-frequency divisors of Llama 3 rope scaling, as llama.cpp's ``rope_freqs`` tensor holds them."""
    rope = _rope_parameters(config)
    dim = _head_dim(config)
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


def _add_tensors(writer, model, family: GGUFFamily, qtype) -> list[str]:
    config = model.config
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == family.arch)
    name_map = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    fallback = []
    if _rope_parameters(config)["rope_type"] == "llama3":
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", llama3_rope_factors(config))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if family.permute_qk and (".q_proj." in hf_name or ".k_proj." in hf_name):
            data = permute_for_llamacpp(data, heads if ".q_proj." in hf_name else kv_heads)
        new_name = _gguf_name(name_map, hf_name)
        target = qtype if data.ndim == 2 else Q.F32
        if target != Q.F32 and data.shape[-1] % gguf.GGML_QUANT_SIZES[target][0] != 0:
            fallback.append(new_name)
            target = Q.F16
        if target == Q.F32:
            writer.add_tensor(new_name, np.ascontiguousarray(data))
        elif target == Q.F16:
            writer.add_tensor(new_name, data.astype(np.float16), raw_dtype=Q.F16)
        else:
            writer.add_tensor(new_name, gguf.quants.quantize(data, target), raw_dtype=target)
    if fallback:
        logger.warning("GGUF export: %d tensor(s) kept in F16: row length not a multiple of the %s block (%s)",
                       len(fallback), qtype.name, ", ".join(fallback[:4]) + (" ..." if len(fallback) > 4 else ""))
    return fallback
