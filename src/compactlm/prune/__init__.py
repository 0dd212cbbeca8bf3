"""Structured pruning along width (hidden, heads, KV groups, MLP) and depth (docs/method.md §3)."""

from .apply import apply_plan, prune_state_dict
from .plan import PLAN_FILE, PrunePlan
from .select import DEPTH_METRICS, PruneTarget, check_depth_metric, make_plan, parse_depth_metric, select_units
from .stream import prune_checkpoint

__all__ = ["DEPTH_METRICS", "PLAN_FILE", "PrunePlan", "PruneTarget", "apply_plan", "check_depth_metric", "make_plan",
           "parse_depth_metric", "prune_checkpoint", "prune_state_dict", "select_units"]
from .api import prune  # noqa: E402

__all__ += ["prune"]
