"""A model's config without its weights: shipped paper configs, a config.json, a directory, a GGUF file, the hub.

The two teachers of the Minitron papers ship here with their public config values
(``configs/``), so ``compactlm plan`` answers for them offline; their hub ids map to these files.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ..arch import ADAPTERS, adapter_for
from ..arch.params import parameter_layout
from ..errors import CompactLMError
from ..models import dequantized_copy, resolve_model
from ..readers import describe_error, read_json_object
from .memory import ModelShape

CONFIGS = Path(__file__).resolve().parent / "configs"
# hub id (or short name) -> shipped config.json with the public values of that checkpoint
SHIPPED_CONFIGS = {
    "meta-llama/Llama-3.1-8B": "llama-3.1-8b.json",      # 8,030,261,248 parameters
    "llama-3.1-8b": "llama-3.1-8b.json",
    "mistralai/Mistral-Nemo-Base-2407": "mistral-nemo-12b.json",   # 12,247,782,400 parameters
    "mistral-nemo-12b": "mistral-nemo-12b.json",
}
# Fields a config.json must give (with the family's MLP fields, see missing_fields); the adapter's other fields
# have defaults that describe the model (num_key_value_heads = heads, head_dim = hidden / heads).
REQUIRED_FIELDS = ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size")
OPTIONAL_FIELDS = ("num_key_value_heads", "head_dim")


def load_config(model: str, trust_remote_code: bool = False):
    """The transformers config of ``model``: a shipped name/hub id, a config.json, a checkpoint dir, a GGUF, a hub id.

    A config.json (a file, a checkpoint's or the hub's) that does not give an architecture field is refused
    (:func:`missing_fields`): transformers would fill in its defaults for the family, and every number planned from
    them would be for another model. A GGUF's config is built from its metadata by transformers and is not checked.
    """

    if model in SHIPPED_CONFIGS:
        return AutoConfig.from_pretrained(str(CONFIGS / SHIPPED_CONFIGS[model]))
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".json":
        try:
            config = AutoConfig.from_pretrained(str(path))
        except Exception as err:  # noqa: BLE001 - the file boundary: not a config, unknown model_type
            raise CompactLMError(f"Cannot read model config '{model}' ({describe_error(err)}): expected a Hugging "
                                 f"Face config.json.") from err
        return _complete(config, read_json_object(path, "model config"), str(path))
    source = resolve_model(model)
    copy = dequantized_copy(source, build=False) if source.gguf_file else None   # a GGUF read costs seconds
    try:
        config = (AutoConfig.from_pretrained(copy) if copy else
                  AutoConfig.from_pretrained(source.path, gguf_file=source.gguf_file, trust_remote_code=trust_remote_code))
        raw = None if source.gguf_file else type(config).get_config_dict(source.path)[0]
    except Exception as err:  # noqa: BLE001 - a damaged GGUF, no network
        raise CompactLMError(f"Cannot read the config of '{model}' ({describe_error(err)}). Pass a local config.json "
                             f"or checkpoint dir, or one of the shipped configs ({', '.join(SHIPPED_CONFIGS)}).") from err
    return config if raw is None else _complete(config, raw, f"{source.path.rstrip('/')}/config.json")


def missing_fields(raw: dict, config) -> list[str]:
    """The architecture fields that ``raw`` (a config.json as written, before transformers fills in defaults) does
    not give, by their Hugging Face names: the width, heads, layers and vocabulary, and the MLP's widths and experts
    in the family's spelling (``intermediate_size``; Mixtral ``num_local_experts``). A field counts under any name
    of the config class's ``attribute_map`` (GPT-2's ``n_embd`` is ``hidden_size``) and in a nested ``text_config``.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    nested = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else {}
    given = set(raw) | set(nested)
    aliases = {**getattr(config, "attribute_map", {}), **getattr(text, "attribute_map", {})}
    names = list(REQUIRED_FIELDS)
    if text.model_type in ADAPTERS:
        names += [attr for field, attr in ADAPTERS[text.model_type].config_names.items()
                  if attr and field not in OPTIONAL_FIELDS and attr not in names]

    def spellings(name: str) -> set[str]:
        return {name, aliases.get(name)} | {alias for alias, target in aliases.items() if target == name}
    return [name for name in names if not spellings(name) & given]


def _complete(config, raw: dict, where: str):
    """``config``, refused when its config.json (``raw``) leaves architecture fields to transformers' defaults."""
    missing = missing_fields(raw, config)
    if missing:
        raise CompactLMError(f"Model config '{where}' does not give {', '.join(missing)}; transformers would fill in "
                             f"its {config.model_type} defaults and the plan would be for another model. Expected a "
                             f"complete config.json: add the missing fields (the checkpoint's own values).")
    return config


def model_shape(config) -> ModelShape:
    """Architecture and exact parameter layout of a config of a supported family."""
    return ModelShape(adapter_for(config).architecture(config), parameter_layout(config))


def meta_model(config):
    """The model skeleton on the meta device: every tensor's shape, no memory, no weights."""

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
