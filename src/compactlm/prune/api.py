"""One-call pruning: scores + target sizes -> (student, plan)."""

from __future__ import annotations

from ..importance import DEFAULT_AGGREGATION, ImportanceScores
from .apply import apply_plan
from .plan import PrunePlan
from .select import PruneTarget, make_plan


def prune(
    model,
    scores: ImportanceScores,
    *,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    num_attention_heads: int | None = None,
    num_key_value_heads: int | None = None,
    num_hidden_layers: int | None = None,
    num_experts: int | None = None,
    moe_intermediate_size: int | None = None,
    shared_expert_intermediate_size: int | None = None,
    aggregation: str | tuple[str, str] = DEFAULT_AGGREGATION,
    depth_metric: str = "bi",
) -> tuple[object, PrunePlan]:
    """Prune ``model`` to the given sizes (None keeps an axis) using importance ``scores`` (any criterion).

    Checks that ``scores`` belong to ``model`` first. Returns the student (a plain
    transformers model) and the :class:`PrunePlan` that produced it.
    """
    scores.check_matches(model)
    target = PruneTarget(hidden_size, intermediate_size, num_attention_heads, num_key_value_heads, num_hidden_layers,
                         num_experts, moe_intermediate_size, shared_expert_intermediate_size)
    plan = make_plan(scores, target, aggregation=aggregation, depth_metric=depth_metric)
    return apply_plan(model, plan), plan
