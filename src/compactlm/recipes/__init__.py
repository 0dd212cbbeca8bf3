"""YAML recipes and ``compactlm run``: the whole pipeline from one file (see ``schema`` and ``run``)."""

from .pipeline import RunResult, run
from .schema import Recipe, load_recipe, resolve_path

__all__ = ["Recipe", "RunResult", "load_recipe", "resolve_path", "run"]
