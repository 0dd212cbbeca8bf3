"""Loading teachers and students: Hugging Face ids, local directories, GGUF files, built-ins.

``load_model`` is the only entry point; everything else in compactlm receives an ordinary
``PreTrainedModel`` and its tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .arch import adapter_for
from .builtins import BUILTIN_MODELS, builtin_gguf
from .errors import CompactLMError
from .io import cache_dir
from .readers import clip, describe_error, read_json

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@dataclass(frozen=True)
class ModelSource:
    """Where weights come from: a directory or hub id, plus a GGUF file name inside it."""

    name: str                   # what the user typed, kept for provenance
    path: str                   # local directory or hub id
    gguf_file: str | None = None


def resolve_model(name: str) -> ModelSource:
    """Map a built-in name, ``.gguf`` path, local directory or hub id to a :class:`ModelSource`."""
    if name in BUILTIN_MODELS:
        gguf = builtin_gguf(name)
        return ModelSource(name=name, path=str(gguf.parent), gguf_file=gguf.name)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise CompactLMError(f"GGUF file '{name}' does not exist. Give the path of an existing .gguf file.")
        return ModelSource(name=name, path=str(path.parent), gguf_file=path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CompactLMError(
                f"Model directory '{name}' has no config.json; expected a Hugging Face checkpoint "
                f"(save_pretrained output) or a .gguf file."
            )
        return ModelSource(name=name, path=str(path))
    looks_local = name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1) or path.exists()
    if looks_local or name.count("/") > 1:
        raise CompactLMError(
            f"Model '{name}' is not an existing directory, .gguf file, Hugging Face id (org/name) "
            f"or built-in ({', '.join(BUILTIN_MODELS)}). Check the path."
        )
    return ModelSource(name=name, path=name)


GGUF_CACHE_FORMAT = 1   # bump when what the cache holds changes


def dequantized_copy(source: ModelSource, build: bool = True) -> Path | None:
    """The de-quantised copy of ``source``'s GGUF file (float32 safetensors, config, tokenizer), or None.

    Parsing a GGUF file costs transformers ~5 s per read (its metadata holds the whole vocabulary)
    and a model load reads it three times; the copy loads in about a second. It lives in
    ``<cache>/gguf/<name>-<key>``, the key hashing the file's path, size and modification time and
    the transformers version, so a changed file or library gets a new copy. Float32 keeps it
    exact for every load dtype (de-quantisation is float32, then a cast). Built-in models are cached
    (their files never change); other GGUF files (a run's exported students among them) only with
    ``COMPACTLM_GGUF_CACHE=1``; ``COMPACTLM_GGUF_CACHE=0`` caches nothing. None: not cached, ``build``
    false and no copy yet, or the cache cannot be written (the caller reads the GGUF file itself).
    """
    setting = os.environ.get("COMPACTLM_GGUF_CACHE", "")
    if setting == "0" or (setting != "1" and source.name not in BUILTIN_MODELS):
        return None
    gguf = (Path(source.path) / source.gguf_file).resolve()
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}|{GGUF_CACHE_FORMAT}"
                         .encode()).hexdigest()[:16]
    copy = cache_dir() / "gguf" / f"{gguf.stem}-{key}"
    if (copy / "config.json").is_file():
        return copy
    if not build:
        return None
    try:
        copy.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{copy.name}.tmp-", dir=copy.parent))
    except OSError as err:
        logger.warning("cannot write the GGUF cache in '%s' (%s); reading the GGUF file directly", copy.parent,
                       err.strerror)
        return None
    try:
        model = AutoModelForCausalLM.from_pretrained(source.path, gguf_file=source.gguf_file, dtype=torch.float32)
        _drop_gguf_quantization(model)
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file).save_pretrained(tmp)
        try:
            os.rename(tmp, copy)    # atomic; a process that built the same copy first wins
        except OSError:
            if not (copy / "config.json").is_file():
                raise
    except OSError as err:
        logger.warning("cannot write the GGUF cache in '%s' (%s); reading the GGUF file directly", copy.parent,
                       err.strerror)
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("de-quantised %s once into %s (float32 safetensors; COMPACTLM_GGUF_CACHE=0 turns this off)",
                gguf.name, copy)
    return copy


def _drop_gguf_quantization(model) -> None:
    """Forget that ``model`` came de-quantised from GGUF: a leftover quantization_config would make
    save_pretrained write a checkpoint that plain from_pretrained refuses."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False


def llama_with_biases(path: str | Path) -> bool:
    """Whether the GGUF file ``path`` is llama.cpp's ``llama`` arch with bias tensors.

    compactlm writes a hidden-pruned Qwen2 that way (llama.cpp's qwen2 cannot size it), and a Llama with
    ``attention_bias`` too. transformers' GGUF loader builds its llama config without bias switches and
    drops those tensors, so it would load a network that computes something else. The answer is kept per
    file version: ``GGUFReader`` parses every metadata field, seconds for a 150k-token vocabulary.
    """
    stat = Path(path).stat()
    return _llama_with_biases(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _llama_with_biases(path: str, size: int, mtime_ns: int) -> bool:
    from gguf import GGUFReader  # here: only a GGUF load pays its import

    reader = GGUFReader(path)
    arch = reader.fields.get("general.architecture")
    return arch is not None and arch.contents() == "llama" and any(t.name.endswith(".bias") for t in reader.tensors)


def _check_transformers_reads(source: ModelSource) -> None:
    """Refuse a GGUF file that transformers' loader would read as another network (:func:`llama_with_biases`).

    A cached de-quantised copy was built from a file that passed, so only a file transformers is about
    to parse is read here.
    """
    if dequantized_copy(source, build=False) is not None:
        return
    path = Path(source.path) / source.gguf_file
    if llama_with_biases(path):
        raise CompactLMError(f"Cannot load GGUF file '{path}' with transformers: written as llama arch with biases, "
                             f"which transformers' GGUF loader cannot read; run it with llama.cpp, or use the "
                             f"Hugging Face checkpoint it was exported from.")


def _hub_error(source: ModelSource, err: Exception) -> CompactLMError:
    return CompactLMError(
        f"Could not load model '{source.name}': not a local directory or .gguf file, and the "
        f"Hugging Face Hub could not provide it ({describe_error(err)}). "
        f"Check the id, your network/HF_TOKEN, or pass a local path."
    )


PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def _check_local_checkpoint(source: ModelSource, allow_pickle: bool) -> None:
    """A local directory must hold safetensors weights; pickle-only weights need an explicit --allow-pickle."""
    folder = Path(source.path)
    if source.gguf_file or not folder.is_dir() or any((folder / f).is_file() for f in SAFE_WEIGHTS):
        return
    if any((folder / f).is_file() for f in PICKLE_WEIGHTS):
        if allow_pickle:
            logger.warning("loading pickled weights of '%s' with torch.load(weights_only=True) (--allow-pickle)",
                           source.name)
            return
        raise CompactLMError(
            f"Model '{source.name}' has only pickled weights (pytorch_model.bin); compactlm loads safetensors only, "
            f"because unpickling can run code. If you trust the file, convert it once: python -c \"from transformers "
            f"import AutoModelForCausalLM as M; M.from_pretrained('{source.path}', use_safetensors=False)"
            f".save_pretrained('{source.path}-safetensors')\", or pass --allow-pickle (loads with "
            f"torch.load(weights_only=True)).")
    raise CompactLMError(f"Model directory '{source.name}' has a config.json but no weights ({SAFE_WEIGHTS[0]}); "
                         f"expected a save_pretrained output.")


def _config_problem(source: ModelSource, trust_remote_code: bool) -> str | None:
    """Why transformers refuses the checkpoint's config.json alone (a field of the wrong type, a value its
    validators reject), in one line; None when the config loads and the weights are to blame."""
    try:
        AutoConfig.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - the file boundary: hub's strict-dataclass errors, ValueError, ...
        return clip(" ".join(str(err).split()), 300) or type(err).__name__
    return None


def _warn_skipped_code(name: str, model) -> None:
    """A checkpoint with ``auto_map`` (its own modelling code) loaded without ``--trust-remote-code`` runs the stock
    transformers class of its ``model_type``: say so, naming the classes that were skipped."""
    auto_map = getattr(model.config, "auto_map", None)
    if not auto_map:
        return
    skipped = sorted({str(v) for v in (auto_map.values() if isinstance(auto_map, dict) else auto_map)})
    logger.warning("'%s': config.json names its own code (auto_map: %s), which was not run; loaded with the stock "
                   "transformers class of model_type '%s' (%s). If the checkpoint needs that code, pass "
                   "--trust-remote-code, only if you trust it.", name, clip(", ".join(skipped), 200),
                   model.config.model_type, type(model).__name__)


def _load_error(source: ModelSource, err: Exception, trust_remote_code: bool) -> CompactLMError:
    """Why a model failed to load, naming the file and the way out."""
    if source.gguf_file:
        if "is not supported yet" in str(err):   # a sound file of an architecture transformers' loader lacks
            return CompactLMError(f"Cannot load GGUF file '{Path(source.path) / source.gguf_file}' with "
                                  f"transformers ({clip(str(err), 200)}); run it with llama.cpp, or use the Hugging "
                                  f"Face checkpoint it was exported from.")
        return CompactLMError(f"Cannot read GGUF file '{Path(source.path) / source.gguf_file}' "
                              f"({describe_error(err)}): the file is damaged or not a GGUF model.")
    config = Path(source.path) / "config.json"
    if config.is_file():
        meta = read_json(config, "model config")
        if isinstance(meta, dict) and meta.get("auto_map") and not trust_remote_code:
            return CompactLMError(
                f"Model '{source.name}' needs its own Python code (config.json has auto_map "
                f"{clip(sorted(meta['auto_map']), 80)}) and compactlm does not run a checkpoint's code by default. "
                f"Pass --trust-remote-code only if you trust it.")
        if "does not recognize this architecture" in str(err) or "model_type" in str(err):
            return CompactLMError(f"Could not load model '{source.name}': {clip(str(err).splitlines()[0], 300)}")
        problem = _config_problem(source, trust_remote_code)
        if problem is not None:
            return CompactLMError(
                f"Cannot load model '{source.name}': a field of its config.json has the wrong type or value "
                f"({problem}); expected a {meta.get('model_type') if isinstance(meta, dict) else 'Hugging Face'} "
                f"config as transformers writes it. Fix that field in '{config}' (the checkpoint's own value).")
        return CompactLMError(f"Cannot load the checkpoint in '{source.path}' ({describe_error(err)}): its weights "
                              f"are damaged or do not match its config.json.")
    return _hub_error(source, err)


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise CompactLMError(f"Unknown dtype '{dtype}'. Expected one of: {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def load_tokenizer(name: str, trust_remote_code: bool = False):
    """Load the tokenizer for a model name as accepted by :func:`load_model`."""

    source = resolve_model(name)
    copy = dequantized_copy(source, build=False) if source.gguf_file else None
    try:
        tok = (AutoTokenizer.from_pretrained(copy) if copy else
               AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file, trust_remote_code=trust_remote_code))
    except Exception as err:  # noqa: BLE001 - the file boundary: a damaged tokenizer.json, GGUF, or the Hub
        if Path(source.path).is_dir():
            raise CompactLMError(f"Cannot load the tokenizer of '{name}' ({describe_error(err)}): its tokenizer "
                                 f"files are missing or damaged.") from err
        raise _hub_error(source, err) from err
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name: str,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    with_tokenizer: bool = True,
    allow_pickle: bool = False,
    device_map: str | dict | None = None,
):
    """Load a causal LM and (optionally) its tokenizer.

    Args:
        name: built-in name (``smollm2-135m``), path to a ``.gguf`` file, a local
            ``save_pretrained`` directory, or a Hugging Face hub id.
        dtype: parameter dtype; GGUF weights are de-quantised to it.
        device: where to put the model.
        trust_remote_code: allow custom modelling code from the checkpoint (off by default).
        allow_pickle: load a pickle-only local checkpoint (``pytorch_model.bin``) with
            ``torch.load(weights_only=True)``; by default only safetensors are read.
        device_map: passed to ``from_pretrained`` instead of ``device`` (``"auto"`` spreads a model
            larger than one device over all of them, layer by layer; ``{"": "cpu"}``); None: ``device``.

    The model is built on the meta device and each tensor is read straight into ``dtype`` (transformers
    5 always loads that way; its ``low_cpu_mem_usage`` flag is gone), so no float32 copy of a bf16
    model is ever made.

    Returns:
        ``(model, tokenizer)`` with the model in eval mode, or just the model if
        ``with_tokenizer`` is false.
    """

    source = resolve_model(name)
    torch_dtype = parse_dtype(dtype)
    _check_local_checkpoint(source, allow_pickle)
    safe = None if source.gguf_file or allow_pickle else True
    try:
        if source.gguf_file:
            _check_transformers_reads(source)
        copy = dequantized_copy(source) if source.gguf_file else None
        path, gguf_file = (str(copy), None) if copy else (source.path, source.gguf_file)
        model, info = AutoModelForCausalLM.from_pretrained(
            path, gguf_file=gguf_file, dtype=torch_dtype, trust_remote_code=trust_remote_code,
            use_safetensors=safe, weights_only=True, output_loading_info=True,
            **({} if device_map is None else {"device_map": device_map}),
        )
    except CompactLMError:
        raise
    except Exception as err:  # noqa: BLE001 - the file boundary: truncated weights, a bad GGUF, the Hub
        raise _load_error(source, err, trust_remote_code) from err
    wrong = {k: sorted(info.get(k) or [])[:3] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(wrong.values()) and not source.gguf_file:
        raise CompactLMError(f"Checkpoint '{name}' does not match its config.json ("
                             + "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in wrong.items() if v)
                             + "): loading it would leave weights random. Re-export it, or fix config.json.")
    if source.gguf_file:
        _drop_gguf_quantization(model)
    model.config._name_or_path = name
    adapter_for(model.config)  # fail early, with the supported list, on an unknown family
    if not trust_remote_code:
        _warn_skipped_code(name, model)
    if device_map is None:
        model.to(device)
    model.eval()
    logger.info("loaded %s (%s, %.1fM parameters)", name, model.config.model_type,
                sum(p.numel() for p in model.parameters()) / 1e6)
    if not with_tokenizer:
        return model
    return model, load_tokenizer(name, trust_remote_code)


def model_fingerprint(model) -> str:
    """A short hash of the architecture and a few weights, robust to the load dtype.

    Values are rounded to bfloat16 before hashing, so the same checkpoint loaded in fp32 or
    bf16 gives the same fingerprint while a different checkpoint of the same shape does not.
    """
    adapter = adapter_for(model.config)
    h = hashlib.sha256(json.dumps(adapter.architecture(model.config).to_dict(), sort_keys=True).encode())
    layers = adapter.decoder_layers(model)
    first, last = adapter.probes
    probes = [model.get_input_embeddings().weight, layers[0].get_submodule(first).weight,
              layers[-1].get_submodule(last).weight]
    for p in probes:
        h.update(p.detach().flatten()[:4096].to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:16]
