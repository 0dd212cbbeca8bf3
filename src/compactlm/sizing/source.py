"""A model's config without its weights: shipped paper configs, a config.json, a directory, a GGUF file, the hub.

The two teachers of the Minitron papers ship here with their public config values
(``configs/``), so ``compactlm plan`` answers for them offline; their hub ids map to these files.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ..arch import adapter_for
from ..arch.params import parameter_layout
from ..errors import CompactLMError
from ..models import dequantized_copy, resolve_model
from ..readers import describe_error
from .memory import ModelShape

CONFIGS = Path(__file__).resolve().parent / "configs"
# hub id (or short name) -> shipped config.json with the public values of that checkpoint
SHIPPED_CONFIGS = {
    "meta-llama/Llama-3.1-8B": "llama-3.1-8b.json",      # 8,030,261,248 parameters
    "llama-3.1-8b": "llama-3.1-8b.json",
    "mistralai/Mistral-Nemo-Base-2407": "mistral-nemo-12b.json",   # 12,247,782,400 parameters
    "mistral-nemo-12b": "mistral-nemo-12b.json",
}


def load_config(model: str, trust_remote_code: bool = False):
    """The transformers config of ``model``: a shipped name/hub id, a config.json, a checkpoint dir, a GGUF, a hub id."""

    if model in SHIPPED_CONFIGS:
        return AutoConfig.from_pretrained(str(CONFIGS / SHIPPED_CONFIGS[model]))
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".json":
        try:
            return AutoConfig.from_pretrained(str(path))
        except Exception as err:  # noqa: BLE001 - the file boundary: not a config, unknown model_type
            raise CompactLMError(f"Cannot read model config '{model}' ({describe_error(err)}): expected a Hugging "
                                 f"Face config.json.") from err
    source = resolve_model(model)
    copy = dequantized_copy(source, build=False) if source.gguf_file else None   # a GGUF read costs seconds
    try:
        if copy:
            return AutoConfig.from_pretrained(copy)
        return AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file, trust_remote_code=trust_remote_code)
    except Exception as err:  # noqa: BLE001 - a damaged GGUF, no network
        raise CompactLMError(f"Cannot read the config of '{model}' ({describe_error(err)}). Pass a local config.json "
                             f"or checkpoint dir, or one of the shipped configs ({', '.join(SHIPPED_CONFIGS)}).") from err


def model_shape(config) -> ModelShape:
    """Architecture and exact parameter layout of a config of a supported family."""
    return ModelShape(adapter_for(config).architecture(config), parameter_layout(config))


def meta_model(config):
    """The model skeleton on the meta device: every tensor's shape, no memory, no weights."""

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
