"""Deployed memory of a candidate: its weights in the deployed type, its KV cache and any recurrent state, in bytes.

Analytic and fast (microseconds a candidate: the search sizes every combination within its budget);
docs/search.md states each term and what is not modelled. Two runtimes, chosen by the budget's type:

* float32 / bfloat16 / float16 weights: transformers. Weights are the exact parameter count
  (:mod:`compactlm.arch.params`, a tied LM head once) times the type's bytes. The KV cache is
  transformers 5's ``DynamicCache`` after ``seq_len`` tokens have been fed: a full-attention layer
  holds ``seq_len`` tokens; a sliding-window layer (``DynamicSlidingWindowLayer``) keeps a view of
  the last ``window - 1`` tokens, but that view lives in the ``window``-token tensor its last
  ``torch.cat`` made, so it holds ``min(seq_len, window)`` tokens of memory. (``generate`` feeds
  every token but the last it returns: prompt + new tokens = ``seq_len + 1``.)
* a GGUF type (``q8_0``, ``q4_0``, ``f16``, ...): llama.cpp. Weights are the tensor data the
  exporter writes (:mod:`compactlm.export.gguf_size`). The KV cache is what llama.cpp allocates
  up front for ``batch`` sequences of ``seq_len`` (one stream each, llama.cpp's default): every
  stream pads its context to a multiple of 256 cells, and the sliding-window layers of the archs
  that run them (gemma2, gemma3) hold ``pad256(min(pad256(seq_len), window + n_ubatch))`` cells
  with ``n_ubatch = 512`` (``swa_full = false``, the default of llama.cpp's tools; llama-cpp-python's
  ``Llama`` passes ``swa_full = true`` unless told otherwise, which sizes them as full layers).

Both caches hold, per layer and cell, a key and a value of ``num_key_value_heads x head_dim`` in
the budget's KV type. ``state`` is recurrent (SSM / linear-attention) state: 0 for every family
compactlm supports.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import cached_property

from ..arch import Architecture
from ..arch.params import ParamLayout, count_parameters, parameter_layout
from ..config.options import MemoryBudget
from ..errors import CompactLMError
from ..export.gguf import check_quant, quant_types
from ..export.gguf_families import FAMILIES, sliding_layers
from ..export.gguf_size import GGUFSizer

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LLAMACPP_PAD = 256       # cells: llama.cpp pads each stream's context (and its SWA cache) to a multiple of this
LLAMACPP_UBATCH = 512    # tokens: llama.cpp's default n_ubatch, which its SWA cache holds beyond the window
MB = 1_000_000


@dataclass(frozen=True)
class DeployedMemory:
    """Bytes a deployed model holds (docs/search.md, "Deployed memory")."""

    weights: int
    """the weights in the deployed type (GGUF: the tensor data of the file llama.cpp loads)"""
    kv_cache: int
    """the KV cache at seq_len x batch"""
    state: int = 0
    """recurrent (SSM / linear-attention) state: 0 for every family compactlm supports today"""

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.state

    def to_dict(self) -> dict:
        return {"weights": self.weights, "kv_cache": self.kv_cache, "state": self.state, "total": self.total}


class _ConfigFacts:
    """What of a teacher's config the arithmetic reads, read once per config object."""

    def __init__(self, config):
        self.config = config
        self.model_type = getattr(config, "model_type", None)
        self.layout: ParamLayout = parameter_layout(config)
        self.num_layers: int = config.num_hidden_layers
        self.sliding: tuple[bool, ...] = tuple(sliding_layers(config))
        self.window: int | None = getattr(config, "sliding_window", None) if any(self.sliding) else None
        family = FAMILIES.get(self.model_type)
        self.llamacpp_swa = bool(family is not None and family.sliding_window and self.window)

    @cached_property
    def gguf(self) -> GGUFSizer:
        return GGUFSizer.of(self.config)


_FACTS: dict[int, tuple[weakref.ref, _ConfigFacts]] = {}
_FACTS_KEPT = 16


def _facts(config) -> _ConfigFacts:
    """The cached facts of ``config`` (keyed by the object: a config changed in place after a call is not re-read)."""
    hit = _FACTS.get(id(config))
    if hit is not None and hit[0]() is config:
        return hit[1]
    facts = _ConfigFacts(config)
    if len(_FACTS) >= _FACTS_KEPT:
        _FACTS.clear()
    _FACTS[id(config)] = (weakref.ref(config), facts)
    return facts


def _kept(arch: Architecture, facts: _ConfigFacts, kept_layers: list[int] | None) -> list[int]:
    if kept_layers is None:
        if arch.num_hidden_layers > facts.num_layers:
            raise CompactLMError(f"num_hidden_layers={arch.num_hidden_layers}, but the teacher has {facts.num_layers} "
                                 f"layers; a candidate keeps at most the teacher's layers.")
        return list(range(arch.num_hidden_layers))
    kept = list(kept_layers)
    if len(kept) != arch.num_hidden_layers or any(not 0 <= i < facts.num_layers for i in kept):
        raise CompactLMError(f"kept_layers={kept}: expected {arch.num_hidden_layers} indices (the candidate's "
                             f"num_hidden_layers) of the teacher's layers 0..{facts.num_layers - 1}. Pass the layers "
                             f"the candidate keeps, or None for the first {arch.num_hidden_layers}.")
    return kept


def _pad(n: int, to: int = LLAMACPP_PAD) -> int:
    return -(-n // to) * to


def _dtype_bytes(dtype: str, what: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise CompactLMError(f"{what}={dtype!r}: expected one of {', '.join(DTYPE_BYTES)}.")
    return DTYPE_BYTES[dtype]


def kv_cells(seq_len: int, window: int | None = None, llamacpp: bool = False) -> int:
    """Tokens (llama.cpp: cells) one layer's cache holds for one sequence of ``seq_len`` tokens: a full-attention layer
    (``window`` None) or a sliding-window one, in transformers or llama.cpp (module docstring)."""
    if llamacpp:
        full = _pad(seq_len)
        return full if window is None else _pad(min(full, window + LLAMACPP_UBATCH))
    return seq_len if window is None else min(seq_len, window)


def deployed_memory(arch: Architecture, config, budget: MemoryBudget,
                    kept_layers: list[int] | None = None) -> DeployedMemory:
    """The memory a candidate of ``arch``'s sizes holds when deployed as ``budget`` says.

    Args:
        arch: the candidate's sizes.
        config: the teacher's transformers config: family, biases, tied embeddings, which layers slide.
        budget: weights type, KV cache type, seq_len and batch (its ``limit`` is not read here).
        kept_layers: the teacher's layer indices the candidate keeps, which decide how many of its layers
            use a sliding window (default: the first ``arch.num_hidden_layers``).
    """
    facts = _facts(config)
    layers = _kept(arch, facts, kept_layers)
    if budget.gguf:
        qtype = quant_types()[check_quant(budget.weights)]
        weights = facts.gguf.bytes(arch, qtype)
    else:
        weights = count_parameters(arch, facts.layout) * _dtype_bytes(budget.weights, "weights")
    per_cell = 2 * arch.num_key_value_heads * arch.head_dim * _dtype_bytes(budget.kv_dtype, "kv_cache")   # K and V
    llamacpp = budget.gguf
    swa = facts.llamacpp_swa if llamacpp else facts.window is not None
    sliding = sum(facts.sliding[i] for i in layers) if swa else 0
    cells = (sliding * kv_cells(budget.seq_len, facts.window, llamacpp)
             + (len(layers) - sliding) * kv_cells(budget.seq_len, None, llamacpp))
    return DeployedMemory(weights=weights, kv_cache=per_cell * cells * budget.batch, state=0)


def describe(memory: DeployedMemory, budget: MemoryBudget) -> str:
    """One line: ``weights 180.2 MB (q8_0) + KV cache 50.3 MB at 2048 x 1 = 230.5 MB`` (MB = 10^6 bytes)."""
    state = f" + state {memory.state / MB:,.1f} MB" if memory.state else ""
    return (f"weights {memory.weights / MB:,.1f} MB ({budget.weights}) + KV cache {memory.kv_cache / MB:,.1f} MB at "
            f"{budget.seq_len} x {budget.batch}{state} = {memory.total / MB:,.1f} MB")


__all__ = ["DTYPE_BYTES", "DeployedMemory", "deployed_memory", "describe", "kv_cells"]
