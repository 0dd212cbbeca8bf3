"""compactlm: Minitron-style pruning and distillation for Hugging Face decoder LMs.

Pipeline: ``load_model`` -> ``estimate_importance`` -> ``prune`` (or ``make_plan`` +
``apply_plan``) -> distill -> evaluate -> ``save_student``.
"""

from .errors import CompactLMError
from .export import save_student
from .importance import ImportanceScores, estimate_importance, lm_loss
from .models import load_model, load_tokenizer
from .provenance import __version__
from .prune import PrunePlan, PruneTarget, apply_plan, make_plan, prune
from .summary import describe, parameter_breakdown

__all__ = [
    "CompactLMError", "ImportanceScores", "PrunePlan", "PruneTarget", "__version__", "apply_plan", "describe",
    "estimate_importance", "lm_loss", "load_model", "load_tokenizer", "make_plan", "parameter_breakdown", "prune",
    "save_student",
]
