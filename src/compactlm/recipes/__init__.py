"""YAML recipes and ``compactlm run``: the whole pipeline from one file (see ``schema`` and ``run``)."""

from .fit import StepPlan, check_recipe, plan_recipe
from .pipeline import RunResult, run
from .schema import Recipe, load_recipe, resolve_path

__all__ = ["Recipe", "RunResult", "StepPlan", "check_recipe", "load_recipe", "plan_recipe", "resolve_path", "run"]
