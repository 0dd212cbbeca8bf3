"""Prune a safetensors checkpoint tensor by tensor, without building the teacher in memory.

Pruning is a pure state-dict transform (:class:`~compactlm.prune.apply.TensorSlicer`), so a
checkpoint bigger than RAM can be pruned by reading one tensor with ``safe_open``, slicing it and
adding it to the output shard being filled; a full shard is written with ``save_file`` and dropped.
Memory is bounded by about one output shard plus one source tensor; the source files are memory
mapped and each is closed (unmapped) as soon as the reader moves on, so their pages leave the RSS.

The layout is worked out first on meta tensors (shapes only) and checked against the pruned
config's own model, also built on the meta device; then the shards are written. The output is the
same directory ``apply_plan`` + ``save_student`` writes — equal tensors, equal config.json and
generation_config.json — with the tokenizer files copied as they are, all published atomically.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

from ..arch import ArchAdapter, adapter_for
from ..config.fields import parse_bytes
from ..errors import CompactLMError
from ..io import atomic_dir
from ..provenance import write_provenance
from ..readers import describe_error, read_json_object
from .apply import TensorSlicer, check_plan_source
from .plan import PrunePlan

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_SHARD_SIZE = "2GB"
# save_pretrained's tokenizer files (and a sentencepiece/BPE model's own), copied byte for byte.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja",
                   "chat_template.json")
# safetensors' dtype names -> torch's.
_SAFE_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
@dataclass(frozen=True)
class StreamResult:
    """What :func:`prune_checkpoint` wrote: the directory, its shards and the parameter counts."""

    out: Path
    shards: int
    source_parameters: int
    student_parameters: int


def parse_size(size: int | str) -> int:
    """Bytes of a shard size: an int, or a string such as ``"500MB"``, ``"2GB"``, ``"40MiB"``."""
    return parse_bytes(size, "shard size")


def checkpoint_files(src_dir: str | Path) -> dict[str, str]:
    """``{tensor name: safetensors file name}`` of a local checkpoint directory (sharded or not)."""
    src = Path(src_dir)
    if (src / INDEX_FILE).is_file():
        index = read_json_object(src / INDEX_FILE, "safetensors index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CompactLMError(f"'{src / INDEX_FILE}' has no weight_map; re-save the checkpoint with save_pretrained.")
        missing = sorted({f for f in weight_map.values() if not (src / f).is_file()})
        if missing:
            raise CompactLMError(f"Checkpoint '{src}' lists shards that are missing: {', '.join(missing[:3])}. "
                                 f"Download the whole checkpoint.")
        return dict(weight_map)
    if (src / SINGLE_FILE).is_file():
        with safe_open(src / SINGLE_FILE, framework="pt") as f:
            return {key: SINGLE_FILE for key in f.keys()}
    raise CompactLMError(f"--stream reads local safetensors checkpoints; '{src}' has neither {SINGLE_FILE} nor "
                         f"{INDEX_FILE}. Convert it with save_pretrained, or prune without --stream.")


def _source_meta(src: Path, files: dict[str, str]) -> dict[str, torch.Tensor]:
    """Every source tensor as a meta tensor of its shape and dtype (headers only, no data read)."""

    meta = {}
    for name in sorted(set(files.values())):
        try:
            with safe_open(src / name, framework="pt") as f:
                for key in f.keys():
                    part = f.get_slice(key)
                    dtype = getattr(torch, _SAFE_DTYPES.get(part.get_dtype(), part.get_dtype().lower()))
                    meta[key] = torch.empty(part.get_shape(), dtype=dtype, device="meta")
        except Exception as err:  # noqa: BLE001 - the file boundary: a truncated or foreign file
            raise CompactLMError(f"Cannot read '{src / name}' ({describe_error(err)}): not a complete safetensors "
                                 f"file. Download it again.") from err
    return {key: meta[key] for key in files if key in meta}


def _meta_model(config, dtype: torch.dtype):
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def _expected_shapes(student, adapter: ArchAdapter, tied: bool) -> dict[str, tuple[int, ...]]:
    """The student's saved tensors: its state dict, less a tied LM head (save_pretrained drops it)."""
    shapes = {k: tuple(v.shape) for k, v in student.state_dict().items()}
    if tied:
        shapes.pop(f"{adapter.lm_head}.weight", None)
    return shapes


def _shard_layout(tensors: dict[str, torch.Tensor], limit: int) -> list[list[str]]:
    """Keys grouped into shards of at most ``limit`` bytes, in order; a bigger tensor gets a shard of its own."""
    shards, size = [[]], 0
    for key, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    return shards


def probe_model(src_dir: str | Path):
    """The checkpoint's model on the meta device with only the tensors a scores fingerprint reads loaded.

    ``ImportanceScores.check_matches(probe_model(dir))`` checks scores against a checkpoint
    without loading it: :func:`~compactlm.models.model_fingerprint` reads the config,
    the embeddings, the first ``down_proj`` and the last ``q_proj`` (``adapter.probes``).
    """

    src = Path(src_dir)
    files = checkpoint_files(src)
    config = AutoConfig.from_pretrained(src)
    adapter = adapter_for(config)
    model = _meta_model(config, torch.float32)
    layers = adapter.decoder_layers(model)
    last = len(layers) - 1
    first_probe, last_probe = adapter.probes
    probes = {adapter.embed_tokens: model.get_input_embeddings(),
              f"{adapter.layers}.0.{first_probe}": layers[0].get_submodule(first_probe),
              f"{adapter.layers}.{last}.{last_probe}": layers[last].get_submodule(last_probe)}
    for module_name, module in probes.items():
        key = module_name + ".weight"
        if key not in files:
            raise CompactLMError(f"Checkpoint '{src}' has no tensor '{key}'; it does not match its config.json.")
        with safe_open(src / files[key], framework="pt") as f:
            module.weight = nn.Parameter(f.get_tensor(key), requires_grad=False)
    return model


def _output_layout(src: Path, files: dict[str, str], config, plan: PrunePlan, dtype: torch.dtype | None):
    """(pruned config, slicer, {output key: (source key, meta tensor)}, output dtype), checked against the config.

    Everything is worked out on meta tensors (shapes from the safetensors headers): a plan that does
    not fit the checkpoint is refused before any data is read.
    """
    adapter = adapter_for(config)
    check_plan_source(config, plan, adapter)
    adapter.check_target(plan.target)
    new_config = adapter.pruned_config(config, plan.target, plan.layers)
    tied = bool(new_config.tie_word_embeddings)
    head_key = f"{adapter.lm_head}.weight"
    slicer = TensorSlicer(plan, adapter)
    source = _source_meta(src, files)
    out_dtype = dtype or next(t.dtype for t in source.values() if t.is_floating_point())
    layout: dict[str, tuple[str, torch.Tensor]] = {}   # output key -> (source key, meta output tensor)
    for key, t in source.items():
        item = slicer(key, t)
        if item is not None and not (tied and item[0] == head_key):
            layout[item[0]] = (key, item[1].to(out_dtype) if item[1].is_floating_point() else item[1])
    student = _meta_model(new_config, out_dtype)
    expected = _expected_shapes(student, adapter, tied)
    if adapter.experts and any(f".{adapter.stored_experts}." in k for k in source):   # stored per expert
        expected = adapter.stored_shapes(expected)
    got = {k: tuple(t.shape) for k, (_, t) in layout.items()}
    if got != expected:
        wrong = sorted(set(got) ^ set(expected)) or sorted(k for k in got if got[k] != expected[k])
        raise CompactLMError(f"Checkpoint '{src}' does not prune to its pruned config (first mismatches: "
                             f"{wrong[:3]}); its tensors do not match config.json. Re-export the checkpoint.")
    new_config.architectures = [type(student).__name__]
    new_config.dtype = out_dtype
    source_parameters = sum(t.numel() for k, t in source.items() if not (config.tie_word_embeddings and k == head_key))
    return new_config, slicer, layout, out_dtype, source_parameters


def _write_shards(tmp: Path, src: Path, files: dict[str, str], layout: dict, slicer: TensorSlicer,
                  out_dtype: torch.dtype, limit: int, parameters: int) -> int:
    """Read, slice and write the output shards (one source file open at a time); returns the number of shards."""

    shards = _shard_layout({k: t for k, (_, t) in layout.items()}, limit)
    names = [SINGLE_FILE] if len(shards) == 1 else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                                                    for i in range(len(shards))]
    weight_map, total_size = {}, 0
    for name, keys in zip(names, shards, strict=True):
        tensors = {}
        for key in sorted(keys, key=lambda k: files[layout[k][0]]):   # one open file at a time
            source_key = layout[key][0]
            with safe_open(src / files[source_key], framework="pt") as f:
                _, t = slicer(source_key, f.get_tensor(source_key))
            t = t.to(out_dtype) if t.is_floating_point() else t
            tensors[key] = t.contiguous()
            weight_map[key] = name
            total_size += t.numel() * t.element_size()
        save_file({k: tensors[k] for k in keys}, tmp / name, metadata={"format": "pt"})
        logger.debug("wrote %s (%d tensors)", name, len(keys))
        del tensors
    if len(names) > 1:
        index = {"metadata": {"total_size": total_size, "total_parameters": parameters},
                 "weight_map": dict(sorted(weight_map.items()))}
        (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return len(names)


def prune_checkpoint(src_dir: str | Path, plan: PrunePlan, out_dir: str | Path, *, dtype: torch.dtype | None = None,
                     max_shard_size: int | str | None = None, overwrite: bool = False,
                     provenance: dict | None = None) -> StreamResult:
    """Prune the safetensors checkpoint ``src_dir`` by ``plan`` into the new directory ``out_dir``, shard by shard.

    Args:
        dtype: the student's dtype; None keeps each tensor's stored dtype.
        max_shard_size: bytes per output shard (int or ``"500MB"``; None: :data:`DEFAULT_SHARD_SIZE`);
            peak memory is about this much plus the largest source tensor.
        provenance: entries added to ``compactlm_provenance.json`` (with ``parameters`` filled in).
    """


    src = Path(src_dir)
    limit = parse_size(max_shard_size or DEFAULT_SHARD_SIZE)
    files = checkpoint_files(src)
    config = AutoConfig.from_pretrained(src)
    new_config, slicer, layout, out_dtype, source_parameters = _output_layout(src, files, config, plan, dtype)
    student_parameters = sum(t.numel() for _, t in layout.values())
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        shards = _write_shards(tmp, src, files, layout, slicer, out_dtype, limit, student_parameters)
        new_config.save_pretrained(tmp)
        if (src / "generation_config.json").is_file():
            generation = GenerationConfig.from_pretrained(src)
        else:
            generation = GenerationConfig.from_model_config(config)
        generation.save_pretrained(tmp)
        for file in TOKENIZER_FILES:
            if (src / file).is_file():
                shutil.copy2(src / file, tmp / file)
        plan.save(tmp)
        write_provenance(tmp, {**(provenance or {}), "streamed": True, "parameters": {
            "source": source_parameters, "student": student_parameters}})
    return StreamResult(Path(out_dir), shards, source_parameters, student_parameters)
