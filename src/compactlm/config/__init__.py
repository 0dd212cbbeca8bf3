"""compactlm's one config layer: option classes (``options``), their field types (``fields``), validation.

``from compactlm.config import TrainArgs, Recipe, validate, AXES`` is the public spelling.
"""

from .fields import (
    AXES,
    CONFIG,
    DEFAULT_AGGREGATION,
    DEFAULT_MODEL,
    MAX_TOKENS,
    SHORT,
    Bool,
    Count,
    Fraction,
    Int,
    ParamTarget,
    Precision,
    TokenCount,
    Tokens,
    parse_tokens,
)
from .options import (
    ArchitectureArgs,
    CorrectionSection,
    DataSection,
    DistillSection,
    EvalArgs,
    EvalSection,
    ExportSection,
    ImportanceSection,
    LossArgs,
    Recipe,
    SearchArgs,
    SearchSpaceArgs,
    StepSection,
    TrainArgs,
)
from .validation import key_path, validate

__all__ = ["AXES", "CONFIG", "DEFAULT_AGGREGATION", "DEFAULT_MODEL", "MAX_TOKENS", "SHORT", "ArchitectureArgs", "Bool",
           "CorrectionSection", "Count", "DataSection", "DistillSection", "EvalArgs", "EvalSection", "ExportSection",
           "Fraction", "ImportanceSection", "Int", "LossArgs", "ParamTarget", "Precision", "Recipe", "SearchArgs",
           "SearchSpaceArgs", "StepSection", "TokenCount", "Tokens", "TrainArgs", "key_path", "parse_tokens",
           "validate"]
