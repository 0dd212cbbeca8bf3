"""The run directory of ``compactlm run``: the one place that names its files and folders.

::

    recipe.yaml  run_state.json  eval.json  report.html
    correction/                     teacher correction (a distillation run dir), if enabled
    <step>/scores/                  activation importance of this step's teacher
    <step>/search/                  candidates.csv/json, one short distillation per top candidate
    <step>/pruned/                  the chosen architecture, pruned, not retrained (HF checkpoint)
    <step>/distilled/               the student: HF checkpoint + metrics.jsonl + checkpoints/
    student.<type>.gguf             the final student for llama.cpp, one file per export.gguf type

The pipeline writes through these properties, the report and the tests read through them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..distill.metrics import METRICS_FILE
from ..errors import CompactLMError
from ..export.gguf import gguf_path
from ..readers import clip
from ..search.search_dir import SearchLayout

STATE_FILE = "run_state.json"
RECIPE_FILE = "recipe.yaml"
EVAL_FILE = "eval.json"
REPORT_FILE = "report.html"


@dataclass(frozen=True)
class StepLayout:
    """``<run>/<step>/``: the folders of one compression step."""

    root: Path

    @property
    def scores(self) -> Path:
        return self.root / "scores"

    @property
    def search(self) -> SearchLayout:
        return SearchLayout(self.root / "search")

    @property
    def pruned(self) -> Path:
        return self.root / "pruned"

    @property
    def distilled(self) -> Path:
        return self.root / "distilled"

    @property
    def distill_metrics(self) -> Path:
        return self.distilled / METRICS_FILE


@dataclass(frozen=True)
class RunLayout:
    """``<run>/``: the files of a run and the folders of its steps."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def recipe(self) -> Path:
        return self.root / RECIPE_FILE

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE

    @property
    def eval(self) -> Path:
        return self.root / EVAL_FILE

    @property
    def report(self) -> Path:
        return self.root / REPORT_FILE

    @property
    def correction(self) -> Path:
        return self.root / "correction"

    def gguf(self, quant: str) -> Path:
        """``<run>/student.<quant>.gguf``."""
        return gguf_path(self.root, quant)

    def step(self, name: str) -> StepLayout:
        """``<run>/<name>/``, refused unless it resolves inside the run directory (no ``..``, no absolute
        path, no symlink out)."""
        path = self.root / name
        if not path.resolve().is_relative_to(self.root.resolve()) or path.resolve() == self.root.resolve():
            raise CompactLMError(f"Step name {clip(name, 60)} would write outside the run directory '{self.root}'. "
                                 f"Use a plain name such as 'student'.")
        return StepLayout(path)
