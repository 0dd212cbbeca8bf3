"""Activation-based importance of heads, neurons, hidden channels and layers (docs/method.md §2)."""

from .aggregation import AGGREGATIONS, DEFAULT_AGGREGATION, parse_aggregation
from .estimate import estimate_importance, lm_loss
from .scores import ImportanceScores, model_fingerprint

__all__ = ["AGGREGATIONS", "DEFAULT_AGGREGATION", "ImportanceScores", "estimate_importance", "lm_loss",
           "model_fingerprint", "parse_aggregation"]
