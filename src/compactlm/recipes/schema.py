"""The YAML recipe of ``compactlm run``: reading, ``--set`` overrides, and the checks between keys.

The sections themselves are option classes of :mod:`compactlm.config`, validated on load with
errors that name the key path, the value and what was expected.

A recipe is teacher + data + (teacher correction) + one or more compression steps + evaluation.
Each step prunes the previous model (the teacher, then the previous step's student) to a
parameter budget, found by search or given as a fixed architecture, and distills it. Several
steps make iterative compression (teacher → medium → small, docs/method.md §8, best practice 1).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..config import (
    CorrectionSection,
    DataSection,
    DistillSection,
    EvalSection,
    ExportSection,
    ImportanceSection,
    Recipe,
    StepSection,
    validate,
)
from ..deploy import budget_problems
from ..errors import CompactLMError
from ..evaluate import get_task
from ..export.gguf import quant_types
from ..importance import check_criterion
from ..readers import MAX_YAML_BYTES, clip, load_yaml, reading

SHIPPED = Path(__file__).resolve().parent
STEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RESERVED_NAMES = ("correction",)   # folders of the run directory that are not steps
# Keys that exist on the option classes but that a recipe's pipeline sets itself: refused, with the key to use.
SET_BY_PIPELINE = {
    ("search", "target_params"): "the step's budget: give steps[{i}].target_params instead",
    ("distill", "train", "max_steps"): "the step count follows steps[{i}].distill.tokens (and, for the search's "
                                         "short distillations, steps[{i}].search.distill_tokens): give tokens instead",
}

__all__ = ["CorrectionSection", "DataSection", "DistillSection", "EvalSection", "ExportSection", "ImportanceSection",
           "Recipe", "StepSection", "load_recipe", "resolve_path"]


def _pipeline_keys(raw: dict) -> list[str]:
    """Keys given in a recipe that the pipeline would overwrite."""
    problems = []
    steps = raw.get("steps") if isinstance(raw, dict) else None
    for i, step in enumerate(steps if isinstance(steps, list) else []):
        for path, why in SET_BY_PIPELINE.items():
            node = step
            for key in path[:-1]:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, dict) and path[-1] in node:
                problems.append(f"steps[{i}].{'.'.join(path)}={clip(node[path[-1]], 40)} is set by the pipeline, "
                                f"so a recipe cannot give it; {why.format(i=i)}")
    return problems


def _name_problems(recipe: Recipe) -> list[str]:
    """Names looked up in registries: the importance criterion and the tasks of the task depth metric."""

    problems = []
    for where, name, check in [("importance.criterion", recipe.importance.criterion, check_criterion),
                               *[(f"importance.depth_tasks[{i}]", t, get_task)
                                 for i, t in enumerate(recipe.importance.depth_tasks)]]:
        try:
            check(name)
        except CompactLMError as err:
            problems.append(f"{where}: {str(err).rstrip('.')}")
    return problems


def _check(recipe: Recipe) -> None:
    """What the types alone cannot say: relations between keys."""
    problems = []
    if not recipe.steps:
        problems.append("'steps' is empty: give at least one compression step")
    names = [s.name for s in recipe.steps]
    if len(set(names)) != len(names):
        problems.append(f"step names {clip(names)} repeat: give each step its own 'name'")
    for i, step in enumerate(recipe.steps):
        if not STEP_NAME.fullmatch(step.name) or step.name in RESERVED_NAMES:
            problems.append(f"steps[{i}].name={clip(step.name, 60)}: a step name is a folder of the run directory, so it "
                            f"must be a plain name of letters, digits, '_' and '-' (at most 64, not "
                            f"{'/'.join(RESERVED_NAMES)}), e.g. 'student' or 'step_90m'")
        if step.architecture is None and step.target_params is None and step.search.memory is None:
            problems.append(f"steps[{i}]: give 'target_params' or 'search.memory' (search) or 'architecture' (fixed)")
        if step.architecture is None:
            problems += [f"steps[{i}].search.{p}" for p in budget_problems(step.search)]
    problems += _name_problems(recipe)

    for quant in recipe.export.gguf:
        if quant.lower() not in quant_types():
            problems.append(f"export.gguf has {clip(quant, 40)}: expected GGUF types from {', '.join(quant_types())}")
    if len({q.lower() for q in recipe.export.gguf}) != len(recipe.export.gguf):
        problems.append(f"export.gguf={clip(recipe.export.gguf)} repeats a type")
    if problems:
        raise CompactLMError("Invalid recipe: " + "; ".join(problems) + ".")


def _set(tree: dict, dotted: str, value) -> None:
    """Apply one ``--set a.b.0.c=value`` override to a raw recipe mapping."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        if isinstance(node, list):
            node = node[int(key)]
        else:
            node = node.setdefault(key, {} if not keys[keys.index(key) + 1].isdigit() else [{}])
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value


def resolve_path(name: str | None) -> Path | None:
    """A recipe path, or the name of a shipped recipe (``default``, ``iterative``, ``fixed``)."""
    if name is None:
        return SHIPPED / "default.yaml"
    path = Path(name)
    if path.is_file():
        return path
    shipped = SHIPPED / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    available = ", ".join(sorted(p.stem for p in SHIPPED.glob("*.yaml")))
    raise CompactLMError(f"Recipe '{name}' is neither a file nor a shipped recipe ({available}). "
                         f"Pass the path of a YAML recipe.")


def load_recipe(name: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override (``key.path=value``) and validate a recipe."""
    path = resolve_path(str(name) if name is not None else None)
    with reading(path, "recipe file"):
        if path.stat().st_size > MAX_YAML_BYTES:
            raise CompactLMError(f"Recipe '{path}' is {path.stat().st_size:,} bytes; a recipe is at most {MAX_YAML_BYTES:,}.")
        text = path.read_text(encoding="utf-8")
    raw = load_yaml(text, f"Recipe '{path}'")
    if raw is None:
        raw = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise CompactLMError(f"--set '{clip(item, 80)}': expected KEY=VALUE, e.g. steps.0.distill.tokens=65536.")
        value = load_yaml(text, f"--set '{clip(item, 80)}'")
        try:
            _set(raw, key.strip(), value)
        except (IndexError, ValueError, TypeError, AttributeError, KeyError) as err:
            raise CompactLMError(f"--set '{clip(item, 80)}': no such place in the recipe ({clip(str(err), 80)}).") from err
    problems = _pipeline_keys(raw)
    if problems:
        raise CompactLMError("Invalid recipe: " + "; ".join(problems) + ".")
    recipe = validate(Recipe, raw)
    _check(recipe)
    return recipe
