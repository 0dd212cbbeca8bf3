"""Placeholder until the deploy-memory branch lands (replaced by it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..arch.params import count_parameters, parameter_layout

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class DeployedMemory:
    weights: int
    kv_cache: int
    state: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.state

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def deployed_memory(arch, config, budget, kept_layers=None) -> DeployedMemory:
    weights = count_parameters(arch, parameter_layout(config)) * _BYTES.get(budget.weights, 1)
    kv = 2 * budget.batch * arch.num_key_value_heads * arch.head_dim * budget.seq_len * arch.num_hidden_layers \
        * _BYTES[budget.kv_dtype]
    return DeployedMemory(weights, kv)
