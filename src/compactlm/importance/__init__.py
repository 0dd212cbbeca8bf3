"""Importance of heads, neurons, hidden channels and layers (docs/method.md §2).

Width criteria (``criteria``): activation statistics (the default), weight magnitude,
first-order Taylor, random. Layer metrics: Block Importance, single-layer LM loss and
zero-shot task accuracy with a block removed (``depth``).
"""

from .aggregation import AGGREGATIONS, DEFAULT_AGGREGATION, parse_aggregation
from .criteria import CRITERIA, CriterionOptions, UnitScores, check_criterion, magnitude_scores, random_scores, taylor_scores
from .depth import layers_dropped, task_block_accuracy
from .estimate import calibration_blocks, estimate_importance
from .loss import lm_loss
from .scores import ImportanceScores

__all__ = ["AGGREGATIONS", "CRITERIA", "CriterionOptions", "DEFAULT_AGGREGATION", "ImportanceScores", "UnitScores",
           "calibration_blocks", "check_criterion", "estimate_importance", "layers_dropped", "lm_loss", "magnitude_scores",
           "parse_aggregation", "random_scores", "task_block_accuracy", "taylor_scores"]
