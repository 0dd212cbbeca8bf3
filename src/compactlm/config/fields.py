"""The field types and constants of the option classes: strict integers, token counts, budgets, the axes."""

from __future__ import annotations

import os
import re
from typing import Annotated, Literal

from pydantic import BeforeValidator, ConfigDict, Field, Strict

from ..errors import CompactLMError
from ..readers import clip

CONFIG = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)

# The architecture axes, by their Hugging Face config names: the one vocabulary of compactlm.
# The mixture-of-experts axes are 0 for a dense model (and ``intermediate_size`` is 0 for an MoE model).
AXES = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
        "num_experts", "moe_intermediate_size", "shared_expert_intermediate_size")
# Letters of the candidate ids (h576-f1536-a9-kv3-l26, MoE: h2048-a32-kv4-l48-x96-m768): ids, not keys;
# every key is spelled as in AXES. An axis at 0 (absent from the family) is left out of the id.
SHORT = {"hidden_size": "h", "intermediate_size": "f", "num_attention_heads": "a", "num_key_value_heads": "kv",
         "num_hidden_layers": "l", "num_experts": "x", "moe_intermediate_size": "m",
         "shared_expert_intermediate_size": "s"}
DEFAULT_MODEL = "smollm2-135m"
DEFAULT_AGGREGATION = "l2,mean"
# Prompts the eval stage continues greedily with every model (compactlm.evaluate.generation)
DEFAULT_PROMPTS = ("Photosynthesis is the process by which", "The capital of France is",
                   "The main causes of the First World War were", "To make a cup of tea, you")
MAX_TOKENS = 10**13   # 10T: beyond any distillation budget; larger numbers are typos (1e30)


def parse_tokens(text: str | int) -> int:
    """``2M``, ``400K``, ``1.5e6`` or ``2000000`` → an int token count."""
    if isinstance(text, bool):
        raise CompactLMError(f"{text!r} is not a token count; expected e.g. 400K, 2M, 1.5e6 or 2000000.")
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMbBgG]?)\s*", str(text))
    if not match:
        raise CompactLMError(f"'{clip(str(text), 40)}' is not a token count; expected e.g. 400K, 2M, 1.5e6 or 2000000.")
    scale = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}[match.group(2).lower()]
    count = float(match.group(1)) * scale
    if count > MAX_TOKENS:
        raise CompactLMError(f"'{clip(str(text), 40)}' is {count:.3g} tokens, more than the {MAX_TOKENS:.0e} compactlm "
                             f"accepts; expected e.g. 400K, 2M or 1B.")
    return int(count)


def parse_bytes(value: int | str, what: str = "size", bare_unit: str = "B") -> int:
    """``80GB``/``500MB`` (powers of 1000), ``80GiB``/``24G``/``40MiB`` (powers of 1024), or a plain number in
    ``bare_unit`` → bytes. The one size parser (shard sizes, device memory)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*", str(value), re.IGNORECASE)
    if not match or float(match[1]) <= 0:
        raise CompactLMError(f"{what} {clip(str(value), 40)!r} is not a size; expected a size such as 80GB, "
                             f"80GiB, 24G or 500MB (more than 0).")
    unit = (match[2] or bare_unit).upper()
    power = "BKMGT".index(unit[0])
    base = 1000 if len(unit) == 2 and unit.endswith("B") else 1024
    return int(float(match[1]) * base ** power)


def _tokens(value):
    try:
        return parse_tokens(value)
    except CompactLMError as err:
        raise ValueError(str(err)) from None


def _text(value):
    """A number written where text is expected (``target_params: 0.667``) is read as its text."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


Int = Annotated[int, Strict()]
"""an integer; ``"32"``, ``32.0``, ``true`` and ``1K`` are refused"""
Count = Annotated[int, Strict(), Field(ge=1)]
"""an integer >= 1"""
Bool = Annotated[bool, Strict()]
Steps = Annotated[int, Strict(), Field(ge=0)]
"""an integer >= 0 (a step count or interval where 0 means "none" or "only at the ends")"""
Fraction = Annotated[float, Field(ge=0, lt=1)]
"""a fraction in [0, 1)"""
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
"""a finite number >= 0"""
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
"""a finite number > 0"""


class TokenCount:
    """Marks a token-count field (its CLI flag parses 400K/2M too)."""


Tokens = Annotated[int, BeforeValidator(_tokens), TokenCount()]
"""a token count: 262144, 256K, 2M or 1.5e6"""
ParamTarget = Annotated[str, BeforeValidator(_text)]
"""a parameter budget: a count (90M, 1.5B) or a fraction of the teacher (0.667)"""
Precision = Literal["auto", "bf16", "fp32"]


def _path_text(value):
    return os.fspath(value) if isinstance(value, os.PathLike) else value


PathText = Annotated[str, BeforeValidator(_path_text)]


def _bytes(value):
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a size such as 300MB, 2GB or 1.5GiB, got {clip(repr(value), 40)}")
    try:
        return parse_bytes(value)
    except CompactLMError as err:
        raise ValueError(str(err)) from None


Bytes = Annotated[int, BeforeValidator(_bytes)]
"""a size in bytes: 300MB, 2GB (powers of 1000), 1.5GiB (powers of 1024) or a plain byte count"""
"""a file or folder path (a ``str`` or ``pathlib.Path``), kept as text"""
