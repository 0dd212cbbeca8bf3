"""Where a search writes: the one place that names the files of a search directory.

::

    candidates.csv  candidates.json     the ranked table (the JSON adds the summary and the winner)
    search_state.json                   progress, rewritten after every unit of work (resume)
    <candidate>/prune_plan.json         the candidate's plan (layer matching of the distillation)
    <candidate>/retrained/              its short distillation (a distillation run directory)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SearchLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def candidates_json(self) -> Path:
        return self.root / "candidates.json"

    @property
    def candidates_csv(self) -> Path:
        return self.root / "candidates.csv"

    @property
    def state(self) -> Path:
        return self.root / "search_state.json"

    def candidate(self, name: str) -> Path:
        """The folder of one candidate (its prune plan and its short distillation)."""
        return self.root / name

    def retrained(self, name: str) -> Path:
        """The short distillation of candidate ``name``: a distillation run directory."""
        return self.root / name / "retrained"
