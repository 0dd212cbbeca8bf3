"""Architecture search within a parameter budget (docs/method.md §5).

``params``   exact analytic parameter count of any architecture of a supported family
``space``    search space (recipe lists or derived from the teacher) and candidate enumeration
``ranking``  zero-shot proxy for every candidate, short distillation for the best, the table
"""

from ..arch.params import ParamLayout, count_active_parameters, count_parameters, parameter_counts, parameter_layout
from .ranking import SearchArgs, SearchResult, search, spearman, table_text
from .space import AXES, Candidate, SearchSpace, candidates_of, enumerate_candidates, parse_param_target

__all__ = [
    "AXES", "Candidate", "ParamLayout", "SearchArgs", "SearchResult", "SearchSpace", "candidates_of",
    "count_active_parameters", "count_parameters", "enumerate_candidates", "parameter_counts",
    "parameter_layout", "parse_param_target", "search", "spearman", "table_text",
]
