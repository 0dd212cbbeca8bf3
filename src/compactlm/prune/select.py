"""From scores to a prune plan: which units each axis keeps (docs/method.md §3).

``select_units`` works on plain score tensors, so any criterion can drive it; ``make_plan``
feeds it the scores of whichever criterion made them (activation, magnitude, taylor, random:
``compactlm.importance.criteria``). Higher score = more important = kept.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic.dataclasses import dataclass

from ..arch import Architecture, adapter_named
from ..config import AXES, CONFIG, ArchitectureArgs
from ..errors import CompactLMError, unknown_name
from ..importance import DEFAULT_AGGREGATION, ImportanceScores, parse_aggregation
from .plan import PrunePlan


@dataclass(config=CONFIG)
class PruneTarget(ArchitectureArgs):
    """Requested sizes (the fields of :class:`compactlm.config.ArchitectureArgs`); None keeps the source size."""

    def resolve(self, source: Architecture, where: str = "") -> Architecture:
        """Validate against ``source`` and return the full target architecture; ``where`` says where ``source`` came from."""
        problems = []
        for name in AXES:
            flag = "--" + name.replace("_", "-")
            value, limit = getattr(self, name), getattr(source, name)
            if value is None:
                continue
            if value <= 0:
                problems.append(f"{flag}={value} must be > 0")
            elif limit == 0:
                problems.append(f"{flag}={value}: the source model has no {name} (a "
                                f"{'dense' if name != 'intermediate_size' else 'mixture-of-experts'} model{where}); "
                                f"leave it out")
            elif value > limit:
                problems.append(f"{flag}={value} is larger than the source model's {name}={limit}{where}; "
                                f"pruning only shrinks")
        target = source.replace(**{k: getattr(self, k) for k in AXES})
        if not problems:
            heads, groups = target.num_attention_heads, target.num_key_value_heads
            per_group = source.num_attention_heads // source.num_key_value_heads
            if heads % groups:
                problems.append(
                    f"--num-attention-heads={heads} is not a multiple of the {groups} KV groups "
                    f"(num_key_value_heads); choose a multiple of {groups}"
                )
            elif heads // groups > per_group:
                problems.append(
                    f"--num-attention-heads={heads} over {groups} KV groups needs {heads // groups} heads per group, "
                    f"but the source has {per_group}; use at most {per_group * groups}"
                )
        if problems:
            raise CompactLMError("Invalid prune target: " + "; ".join(problems) + ".")
        return target

    def check(self, source: Architecture, model_type: str | None, where: str = "") -> Architecture:
        """:meth:`resolve`, and the family's own limits (:meth:`~compactlm.arch.ArchAdapter.check_target`): the one
        validation of a target, by ``prune`` before it loads the model and by ``plan`` for a fixed architecture."""
        target = self.resolve(source, where)
        adapter_named(model_type).check_target(target)
        return target

    @classmethod
    def of(cls, sizes: ArchitectureArgs) -> "PruneTarget":
        """The target of a recipe step's ``architecture`` (or any :class:`ArchitectureArgs`)."""
        return cls(**{name: getattr(sizes, name) for name in AXES})


def _top(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k largest scores, sorted ascending (original order kept)."""
    return sorted(torch.topk(scores.float(), k).indices.tolist())


def _keep_by_lowest_drop(drop_cost: torch.Tensor, num_keep: int) -> list[int]:
    """Keep the layers whose removal would cost most; drop the ``L - num_keep`` cheapest."""
    num_drop = len(drop_cost) - num_keep
    dropped = set(torch.topk(-drop_cost.float(), num_drop).indices.tolist()) if num_drop else set()
    return [i for i in range(len(drop_cost)) if i not in dropped]


def _depth_bi(scores: ImportanceScores, num_keep: int, arg: str | None) -> list[int]:
    return _keep_by_lowest_drop(scores.block_importance(1), num_keep)


def _depth_loss(scores: ImportanceScores, num_keep: int, arg: str | None) -> list[int]:
    return _keep_by_lowest_drop(scores.layer_loss(), num_keep)


def _drop_block(num_layers: int, start: int, length: int) -> list[int]:
    return [i for i in range(num_layers) if not start <= i < start + length]


def _depth_block(scores: ImportanceScores, num_keep: int, arg: str | None) -> list[int]:
    num_layers = scores.architecture.num_hidden_layers
    length = num_layers - num_keep
    if length == 0:
        return list(range(num_layers))
    return _drop_block(num_layers, int(torch.argmin(scores.block_importance(length))), length)


def _depth_task(scores: ImportanceScores, num_keep: int, task: str) -> list[int]:
    """Drop the contiguous block whose removal keeps the highest accuracy on ``task``; ties go to the lowest block BI."""
    num_layers = scores.architecture.num_hidden_layers
    length = num_layers - num_keep
    if length == 0:
        return list(range(num_layers))
    acc = scores.task_accuracy(task, length)                            # (L - length + 1,)
    best = torch.nonzero(acc == acc.max()).flatten()
    start = int(best[torch.argmin(scores.block_importance(length)[best])])
    return _drop_block(num_layers, start, length)


# name -> fn(scores, layers to keep, argument after "name:" or None) -> kept layer indices
DEPTH_METRICS: dict[str, Callable[[ImportanceScores, int, str | None], list[int]]] = {
    "bi": _depth_bi,        # drop the layers with the lowest Block Importance (non-contiguous)
    "loss": _depth_loss,    # drop the layers whose single removal raises LM loss least
    "block": _depth_block,  # drop the contiguous block with the lowest block BI
    "task": _depth_task,    # task:<name>: drop the contiguous block whose removal keeps most zero-shot accuracy
}
DEPTH_METRIC_ARGS = {"task": "a zero-shot task name, e.g. task:winogrande"}


def parse_depth_metric(spec: str) -> tuple[str, str | None]:
    """``"bi"`` -> ("bi", None); ``"task:winogrande"`` -> ("task", "winogrande"); validated."""
    name, _, arg = spec.partition(":")
    if name not in DEPTH_METRICS:
        raise unknown_name("depth metric", spec, [m + (":<name>" if m in DEPTH_METRIC_ARGS else "") for m in DEPTH_METRICS])
    if name in DEPTH_METRIC_ARGS and not arg:
        raise CompactLMError(f"Depth metric '{spec}' needs {DEPTH_METRIC_ARGS[name]}.")
    if name not in DEPTH_METRIC_ARGS and arg:
        raise CompactLMError(f"Depth metric '{name}' takes no argument (got '{spec}').")
    return name, arg or None


def check_depth_metric(scores: ImportanceScores, spec: str) -> None:
    """Raise now, before a model is loaded, if ``scores`` cannot serve depth metric ``spec``."""
    name, arg = parse_depth_metric(spec)
    if name == "task" and arg not in scores.depth_tasks:
        scores.task_accuracy(arg, 1)  # raises the error that names --depth-tasks
    if name == "loss":
        scores.layer_loss()


def select_units(
    source: Architecture,
    target: Architecture,
    *,
    layers: list[int],
    neurons: torch.Tensor,
    heads: torch.Tensor,
    channels: torch.Tensor,
    experts: torch.Tensor | None = None,
    expert_neurons: torch.Tensor | None = None,
    shared_neurons: torch.Tensor | None = None,
) -> PrunePlan:
    """Build a plan from per-unit scores.

    Args:
        layers: original indices of the layers to keep (len == target.num_hidden_layers).
        neurons: (L, I) MLP neuron scores; heads: (L, H) query-head scores;
            channels: (E,) hidden-channel scores. L, I, H, E are the source sizes.
        experts, expert_neurons, shared_neurons: for a mixture-of-experts source, (L, X) expert
            scores, (L, X, I_moe) scores of each expert's neurons and (L, S) shared-expert neuron
            scores. Each kept expert keeps its own best ``moe_intermediate_size`` neurons.
    """
    assert len(layers) == target.num_hidden_layers
    per_group = source.num_attention_heads // source.num_key_value_heads
    keep_per_group = target.num_attention_heads // target.num_key_value_heads
    plan_groups, plan_heads, plan_neurons = {}, {}, {}
    for i in layers:
        head_scores = heads[i].view(source.num_key_value_heads, per_group)      # (G, H/G)
        groups = _top(head_scores.norm(dim=1), target.num_key_value_heads)      # rank groups by L2 of their heads
        plan_groups[i] = groups
        plan_heads[i] = sorted(g * per_group + h for g in groups for h in _top(head_scores[g], keep_per_group))
        plan_neurons[i] = _top(neurons[i], target.intermediate_size) if source.intermediate_size else []
    hidden = None if target.hidden_size == source.hidden_size else _top(channels, target.hidden_size)
    plan = PrunePlan(source=source, target=target, layers=list(layers), hidden=hidden,
                     kv_groups=plan_groups, heads=plan_heads, neurons=plan_neurons)
    if source.is_moe:
        for i in layers:
            plan.experts[i] = _top(experts[i], target.num_experts)
            plan.expert_neurons[i] = [_top(expert_neurons[i, e], target.moe_intermediate_size) for e in plan.experts[i]]
            if source.shared_expert_intermediate_size:
                plan.shared_neurons[i] = _top(shared_neurons[i], target.shared_expert_intermediate_size)
    return plan


def make_plan(
    scores: ImportanceScores,
    target: PruneTarget,
    *,
    aggregation: str | tuple[str, str] = DEFAULT_AGGREGATION,
    depth_metric: str = "bi",
) -> PrunePlan:
    """Plan a prune from importance scores: depth first, then width in the kept layers.

    ``depth_metric``: ``bi`` | ``loss`` | ``block`` | ``task:<name>`` (see :data:`DEPTH_METRICS`);
    ``aggregation`` applies to activation scores only (other criteria score units directly).
    """
    metric, arg = parse_depth_metric(depth_metric)
    batch, seq = parse_aggregation(aggregation)
    source = scores.architecture
    arch = target.resolve(source)
    adapter_named(scores.meta["model_type"]).check_target(arch)
    layers = DEPTH_METRICS[metric](scores, arch.num_hidden_layers, arg)
    moe = {}
    if source.is_moe:
        moe = dict(experts=scores.experts(), expert_neurons=scores.expert_neurons((batch, seq)),
                   shared_neurons=scores.shared_neurons((batch, seq)) if source.shared_expert_intermediate_size else None)
    plan = select_units(source, arch, layers=layers, neurons=scores.neurons((batch, seq)),
                        heads=scores.heads((batch, seq)), channels=scores.channels((batch, seq)), **moe)
    plan.source_model = scores.meta.get("model")
    plan.criteria = {"criterion": scores.criterion, "aggregation": f"{batch},{seq}", "depth_metric": depth_metric,
                     "scores_fingerprint": scores.meta.get("fingerprint")}
    if metric == "task":
        plan.criteria["depth_task"] = {k: v for k, v in scores.meta.get("depth_tasks", {}).get(arg, {}).items()
                                       if k in ("examples", "seed", "source")}
    return plan
