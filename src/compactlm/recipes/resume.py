"""What ``compactlm run --resume`` lets change: the recipe keys of stages that have not started.

The stages run in one order (:func:`position`): correction, then per step importance, search,
prune, distill, then export and eval; each stage reads the outputs of the ones before it. A
changed key is *safe* when the first stage that reads it has not started (finished, or left work
on disk: a distillation checkpoint, a search's saved progress), for then no stage after it has
either. The teacher, the data and the keys that every stage reads (dtype, device, precision,
trust_remote_code), and any key this module does not know, never change on a resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..distill.checkpoint import latest_checkpoint
from ..errors import CompactLMError
from ..readers import clip
from .records import CORRECTION, DISTILL, EVAL, EXPORT, IMPORTANCE, SEARCH, STEP_STAGES, RunState, stage_key
from .run_dir import RECIPE_FILE, RunLayout

ABSENT = object()
"""A key one of the two recipes lacks (a step added or removed, a key of another compactlm version)."""
NEVER = (-1,)
"""The position of the keys every stage reads: no resume may change them."""
WHOLE_RUN = ("teacher", "data", "dtype", "device", "precision", "trust_remote_code")


@dataclass(frozen=True)
class Change:
    path: tuple
    old: Any
    new: Any

    @property
    def dotted(self) -> str:
        """``steps.0.distill.tokens``: the spelling of ``--set``."""
        return ".".join(str(p) for p in self.path)

    def __str__(self) -> str:
        return f"{self.dotted}: {_show(self.old)} -> {_show(self.new)}"


def _show(value: Any) -> str:
    return "(absent)" if value is ABSENT else clip(repr(value), 80)


def recipe_changes(old: Any, new: Any, path: tuple = ()) -> Iterator[Change]:
    """Every leaf that differs between two recipe dicts; the steps compare one by one, other lists as a whole."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in dict.fromkeys([*old, *new]):
            yield from recipe_changes(old.get(key, ABSENT), new.get(key, ABSENT), (*path, key))
    elif path == ("steps",) and isinstance(old, list) and isinstance(new, list):
        for i in range(max(len(old), len(new))):
            yield from recipe_changes(old[i] if i < len(old) else ABSENT, new[i] if i < len(new) else ABSENT,
                                      (*path, i))
    elif old != new:
        yield Change(path, old, new)


def position(stage: str, step_names: list[str]) -> tuple:
    """Where a ``run_state.json`` stage key runs, comparable as tuples; unknown keys sort after everything."""
    if stage == CORRECTION:
        return (0,)
    if stage == EXPORT:
        return (2,)
    if stage == EVAL:
        return (3,)
    name, _, kind = stage.rpartition("/")
    if name in step_names and kind in STEP_STAGES:
        return (1, step_names.index(name), STEP_STAGES.index(kind))
    return (9,)


def first_reader(path: tuple) -> tuple:
    """The position of the first stage that reads a recipe key (:data:`NEVER` for the keys of the whole run)."""
    head = path[0]
    if head == "correction":
        return (0,)
    if head == "importance":
        return (1, 0, STEP_STAGES.index(IMPORTANCE))
    if head == "export":
        return (2,)
    if head == "eval":
        return (3,)
    if head != "steps" or len(path) < 2 or not isinstance(path[1], int):
        return NEVER   # WHOLE_RUN and any key not named here
    i, key = path[1], path[2] if len(path) > 2 else None
    search = (1, i, STEP_STAGES.index(SEARCH))
    if key in ("target_params", "architecture", "search"):
        return search   # the search, or for a fixed architecture the prune (which reads search.aggregation too)
    if key == "distill":
        sub = path[3] if len(path) > 3 else None
        # loss and train also drive the search's short distillations
        return (1, i, STEP_STAGES.index(DISTILL)) if sub in ("tokens", "init") else search
    return (1, i, STEP_STAGES.index(IMPORTANCE))   # the step's name, the whole step, or a key not named here


def _describe(pos: tuple, step_names: list[str]) -> str:
    if pos == NEVER:
        return "every stage"
    if pos[0] == 1:
        name = step_names[pos[1]] if pos[1] < len(step_names) else f"steps.{pos[1]}"
        return stage_key(name, STEP_STAGES[pos[2]])
    return {(0,): CORRECTION, (2,): EXPORT, (3,): EVAL}.get(pos, "?")


def started(state: RunState, layout: RunLayout) -> dict[tuple, str]:
    """The stages of the saved run that have started, by position: ``finished``, or what they left on disk."""
    steps = state.recipe.get("steps") if isinstance(state.recipe.get("steps"), list) else []
    names = [str(s.get("name")) if isinstance(s, dict) else "" for s in steps]
    found = {position(key, names): f"{key} has finished" for key in state.stages}
    partial = {CORRECTION: layout.correction}
    for name in names:
        try:
            step = layout.step(name)
        except CompactLMError:
            continue
        partial[stage_key(name, DISTILL)] = step.distilled
        if step.search.state.is_file():
            found.setdefault(position(stage_key(name, SEARCH), names), f"{stage_key(name, SEARCH)} has started")
    for key, run_dir in partial.items():
        if key not in state.stages and latest_checkpoint(run_dir) is not None:
            found.setdefault(position(key, names), f"{key} has started (a checkpoint in {run_dir})")
    return found


def check_resume(run_dir: Path, state: RunState, recipe: dict) -> list[Change]:
    """The changes from the saved recipe to ``recipe``, all safe (see the module docstring); refuses the others."""
    changes = list(recipe_changes(state.recipe, recipe))
    if not changes:
        return []
    steps = state.recipe.get("steps") if isinstance(state.recipe.get("steps"), list) else []
    names = [str(s.get("name")) if isinstance(s, dict) else "" for s in steps]
    begun = started(state, RunLayout(run_dir))
    frontier = max(begun) if begun else None
    unsafe = [c for c in changes if first_reader(c.path) == NEVER
              or (frontier is not None and first_reader(c.path) <= frontier)]
    if unsafe:
        why = clip("; ".join(f"{c} (read by {_describe(first_reader(c.path), names)})" for c in unsafe[:6]), 700)
        more = f" and {len(unsafe) - 6} more" if len(unsafe) > 6 else ""
        where = f", and {begun[frontier]}" if frontier is not None else ""
        raise CompactLMError(
            f"Cannot resume '{run_dir}' with a changed recipe: {why}{more}{where}. Resume with the recipe it was "
            f"started with (compactlm run {run_dir / RECIPE_FILE} --out {run_dir} --resume), or start again with "
            f"--overwrite.")
    return changes
