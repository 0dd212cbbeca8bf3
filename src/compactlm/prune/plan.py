"""The prune plan: the single, replayable record of what was cut (docs/method.md §3).

JSON layout::

    {"format": "compactlm.prune_plan/1",
     "source_model": "...", "source": {Architecture}, "target": {Architecture},
     "criteria": {"criterion": "activation", "aggregation": "l2,mean", "depth_metric": "bi", ...},
     "kept": {"layers": [orig layer index of each student layer],
              "hidden": [kept channel indices] | null (all kept),
              "kv_groups": {"<orig layer>": [...]}, "heads": {"<orig layer>": [...]},
              "neurons": {"<orig layer>": [...]},
              # mixture-of-experts models only:
              "experts": {"<orig layer>": [kept expert indices]},
              "expert_neurons": {"<orig layer>": [[kept neurons of each kept expert]]},
              "shared_neurons": {"<orig layer>": [...]}}}     # the shared expert (Qwen2-MoE)

All index lists are sorted, so original order is preserved. A dense model's plan has no
expert keys (plans written before MoE support read unchanged).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..arch import Architecture
from ..errors import CompactLMError
from ..readers import clip, read_json_object, reading

PLAN_FILE = "prune_plan.json"
FORMAT = "compactlm.prune_plan/1"


@dataclass
class PrunePlan:
    source: Architecture
    target: Architecture
    layers: list[int]
    hidden: list[int] | None
    kv_groups: dict[int, list[int]]
    heads: dict[int, list[int]]
    neurons: dict[int, list[int]]
    experts: dict[int, list[int]] = field(default_factory=dict)
    expert_neurons: dict[int, list[list[int]]] = field(default_factory=dict)
    shared_neurons: dict[int, list[int]] = field(default_factory=dict)
    source_model: str | None = None
    criteria: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        moe = {}
        if self.source.is_moe:
            moe = {"experts": {str(k): v for k, v in self.experts.items()},
                   "expert_neurons": {str(k): v for k, v in self.expert_neurons.items()}}
            if self.source.shared_expert_intermediate_size:
                moe["shared_neurons"] = {str(k): v for k, v in self.shared_neurons.items()}
        return {
            "format": FORMAT,
            "source_model": self.source_model,
            "source": self.source.to_dict(),
            "target": self.target.to_dict(),
            "criteria": self.criteria,
            "kept": {
                "layers": self.layers,
                "hidden": self.hidden,
                "kv_groups": {str(k): v for k, v in self.kv_groups.items()},
                "heads": {str(k): v for k, v in self.heads.items()},
                "neurons": {str(k): v for k, v in self.neurons.items()},
                **moe,
            },
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PrunePlan":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise CompactLMError(f"Prune plan has format {clip(d.get('format') if isinstance(d, dict) else d, 60)}; "
                                 f"expected {FORMAT!r}.")
        kept = d["kept"]
        as_int_keys = lambda m: {int(k): list(v) for k, v in m.items()}  # noqa: E731
        plan = cls(
            source=Architecture(**d["source"]), target=Architecture(**d["target"]),
            layers=list(kept["layers"]), hidden=kept["hidden"],
            kv_groups=as_int_keys(kept["kv_groups"]), heads=as_int_keys(kept["heads"]),
            neurons=as_int_keys(kept["neurons"]), experts=as_int_keys(kept.get("experts", {})),
            expert_neurons=as_int_keys(kept.get("expert_neurons", {})),
            shared_neurons=as_int_keys(kept.get("shared_neurons", {})), source_model=d.get("source_model"),
            criteria=d.get("criteria", {}),
        )
        problems = plan.problems()
        if problems:
            raise CompactLMError("Invalid prune plan: " + "; ".join(problems[:3]) + ". Re-create it with "
                                 "`compactlm prune --scores ...`, which writes a valid prune_plan.json.")
        return plan

    def problems(self) -> list[str]:
        """Every kept-index list must be sorted, unique, in range of the source and as long as the target says."""
        src, tgt = self.source, self.target
        found = []

        def check(what: str, index, limit: int, length: int) -> None:
            ok = isinstance(index, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in index)
            if not ok or index != sorted(set(index)) or (index and not 0 <= index[0] <= index[-1] < limit):
                found.append(f"{what} must be sorted, unique integers in 0..{limit - 1}; got {clip(index, 60)}")
            elif len(index) != length:
                found.append(f"{what} keeps {len(index)}, but the target has {length}")

        check("kept.layers", self.layers, src.num_hidden_layers, tgt.num_hidden_layers)
        if self.hidden is not None:
            check("kept.hidden", self.hidden, src.hidden_size, tgt.hidden_size)
        for name, table, limit, length in (
                ("heads", self.heads, src.num_attention_heads, tgt.num_attention_heads),
                ("kv_groups", self.kv_groups, src.num_key_value_heads, tgt.num_key_value_heads),
                ("neurons", self.neurons, src.intermediate_size, tgt.intermediate_size)):
            if sorted(table) != sorted(self.layers):
                found.append(f"kept.{name} must have an entry for each kept layer {clip(self.layers, 60)}")
            for layer, index in table.items():
                check(f"kept.{name}[{layer}]", index, limit, length)
        if src.is_moe:
            moe_tables = [("experts", self.experts, src.num_experts, tgt.num_experts)]
            if src.shared_expert_intermediate_size:
                moe_tables.append(("shared_neurons", self.shared_neurons, src.shared_expert_intermediate_size,
                                   tgt.shared_expert_intermediate_size))
            for name, table, limit, length in moe_tables:
                if sorted(table) != sorted(self.layers):
                    found.append(f"kept.{name} must have an entry for each kept layer {clip(self.layers, 60)}")
                for layer, index in table.items():
                    check(f"kept.{name}[{layer}]", index, limit, length)
            if sorted(self.expert_neurons) != sorted(self.layers):
                found.append(f"kept.expert_neurons must have an entry for each kept layer {clip(self.layers, 60)}")
            for layer, per_expert in self.expert_neurons.items():
                if not isinstance(per_expert, list) or len(per_expert) != tgt.num_experts:
                    found.append(f"kept.expert_neurons[{layer}] must list the neurons of each of the "
                                 f"{tgt.num_experts} kept experts")
                    continue
                for e, index in enumerate(per_expert):
                    check(f"kept.expert_neurons[{layer}][{e}]", index, src.moe_intermediate_size,
                          tgt.moe_intermediate_size)
        return found

    def save(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "PrunePlan":
        path = Path(path)
        if path.is_dir():
            path = path / PLAN_FILE
        if not path.is_file():
            raise CompactLMError(f"No prune plan at '{path}'. Expected a {PLAN_FILE} written by `compactlm prune`.")
        data = read_json_object(path, "prune plan")
        with reading(path, "prune plan"):   # missing keys, wrong types
            return cls.from_dict(data)
