"""The prune plan: the single, replayable record of what was cut (METHOD.md §3).

JSON layout::

    {"format": "compactlm.prune_plan/1",
     "source_model": "...", "source": {Architecture}, "target": {Architecture},
     "criteria": {"aggregation": "l2,mean", "depth_metric": "bi", ...},
     "kept": {"layers": [orig layer index of each student layer],
              "hidden": [kept channel indices] | null (all kept),
              "kv_groups": {"<orig layer>": [...]}, "heads": {"<orig layer>": [...]},
              "neurons": {"<orig layer>": [...]}}}

All index lists are sorted, so original order is preserved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..arch import Architecture
from ..errors import CompactLMError

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
    source_model: str | None = None
    criteria: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
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
            },
        }

    @classmethod
    def from_dict(cls, d: dict) -> "PrunePlan":
        if d.get("format") != FORMAT:
            raise CompactLMError(f"Prune plan has format {d.get('format')!r}; expected {FORMAT!r}.")
        kept = d["kept"]
        as_int_keys = lambda m: {int(k): list(v) for k, v in m.items()}  # noqa: E731
        return cls(
            source=Architecture(**d["source"]), target=Architecture(**d["target"]),
            layers=list(kept["layers"]), hidden=kept["hidden"],
            kv_groups=as_int_keys(kept["kv_groups"]), heads=as_int_keys(kept["heads"]),
            neurons=as_int_keys(kept["neurons"]), source_model=d.get("source_model"),
            criteria=d.get("criteria", {}),
        )

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
        return cls.from_dict(json.loads(path.read_text()))
