"""The search space: candidate architectures within a parameter budget (docs/method.md §5).

A space is a list of sizes per axis, written in a recipe or derived from the teacher; the
candidates are every combination that transformers accepts and whose exact parameter count
(:mod:`.params`) lies within ±tolerance of the target.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from ..arch import Architecture, adapter_named
from ..arch.params import ParamLayout, count_active_parameters, count_parameters
from ..config import AXES, SHORT
from ..config.options import MemoryBudget
from ..deploy import deployed_memory
from ..errors import CompactLMError
from ..readers import clip

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class Candidate:
    """One architecture of the space with its exact parameter count."""

    arch: Architecture
    params: int
    active_params: int | None = None   # MoE: parameters touched per token (None: the same as params)

    @property
    def name(self) -> str:
        """Short id such as ``h576-f1024-a9-kv3-l26``."""
        return "-".join(f"{SHORT[a]}{getattr(self.arch, a)}" for a in AXES if getattr(self.arch, a))

    def sizes(self) -> dict[str, int]:
        """The sizes of the axes the family has (an axis at 0, e.g. experts of a dense model, is left out)."""
        return {a: getattr(self.arch, a) for a in AXES if getattr(self.arch, a)}


@dataclass
class SearchSpace:
    """Sizes to try on each axis (every combination is a candidate before the budget filter)."""

    hidden_size: list[int]
    intermediate_size: list[int]
    num_attention_heads: list[int]
    num_key_value_heads: list[int]
    num_hidden_layers: list[int]
    num_experts: list[int] = field(default_factory=lambda: [0])           # [0]: a dense model
    moe_intermediate_size: list[int] = field(default_factory=lambda: [0])
    shared_expert_intermediate_size: list[int] = field(default_factory=lambda: [0])

    def to_dict(self) -> dict[str, list[int]]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: Architecture) -> "SearchSpace":
        """Lists from a recipe; an axis left out keeps the source size."""
        unknown = sorted(set(values) - set(AXES))
        if unknown:
            raise CompactLMError(f"Unknown search-space axis {unknown}; the axes are {', '.join(AXES)}.")
        lists = {}
        for axis in AXES:
            if not getattr(source, axis):     # an axis the family lacks (dense: experts; MoE: intermediate_size)
                if values.get(axis) not in (None, [], 0, [0]):
                    raise CompactLMError(f"search space {axis}={values[axis]!r}: the source model has no {axis}; "
                                         f"leave it out.")
                lists[axis] = [0]
                continue
            value = values.get(axis, [getattr(source, axis)])
            value = value if isinstance(value, list) else [value]
            if not value or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= getattr(source, axis)
                                    for v in value):
                raise CompactLMError(f"search space {axis}={value!r}: expected a list of integers in "
                                     f"1..{getattr(source, axis)} (the source size).")
            lists[axis] = sorted(set(value), reverse=True)
        return cls(**lists)

    @classmethod
    def derive(cls, source: Architecture, *, min_hidden: float = 0.5, min_intermediate: float = 0.25,
               max_depth_cut: float = 0.2, prune_kv_heads: bool = False) -> "SearchSpace":
        """A space around ``source``: widths in hardware-friendly steps, heads in multiples of the KV groups.

        Hidden and MLP sizes go down from the source in steps of the largest of 128/64/32/16/8
        that divides the size and is at most 1/8 of it, to ``min_hidden``/``min_intermediate``
        of the source. Where that step is not a multiple of the query heads (SmolLM2's 9 heads at
        hidden 576, step 64), the hidden step is the multiple of lcm(heads, 8) nearest to it (72):
        transformers' configs demand ``hidden_size % num_attention_heads == 0``, so a 64-step
        grid would leave no valid hidden size below the source. Query heads are every multiple of
        the KV groups; layers go down to
        ``ceil(L * (1 - max_depth_cut))``. KV groups stay unless ``prune_kv_heads``. MoE models:
        experts go down in the same steps to half of them (never below the router's top-k), expert
        and shared-expert widths like the MLP's.
        """
        def widths(size: int, low: float, step_at_least: int = 1, multiple_of: int = 1) -> list[int]:
            if not size:
                return [0]
            step = next((s for s in (128, 64, 32, 16, 8) if size % s == 0 and s <= size / 8), 1)
            if step < step_at_least and size % step_at_least == 0:
                step = step_at_least
            if step % multiple_of and size % multiple_of == 0:
                unit = math.lcm(multiple_of, 8) if size % math.lcm(multiple_of, 8) == 0 else multiple_of
                step = max(unit, round(step / unit) * unit)
            return [w for w in range(size, 0, -step) if w >= low * size]

        aligned = 8 if source.is_moe else 1    # MoE: expert kernels need multiples of 8 (16-byte rows)

        groups = source.num_key_value_heads
        kv = [g for g in range(groups, 0, -1) if groups % g == 0] if prune_kv_heads else [groups]
        heads = sorted({h for g in kv for h in range(g, source.num_attention_heads + 1, g)}, reverse=True)
        layers = source.num_hidden_layers
        return cls(hidden_size=widths(source.hidden_size, min_hidden, aligned, source.num_attention_heads),
                   intermediate_size=widths(source.intermediate_size, min_intermediate),
                   num_attention_heads=heads, num_key_value_heads=kv,
                   num_hidden_layers=list(range(layers, max(1, math.ceil(layers * (1 - max_depth_cut))) - 1, -1)),
                   num_experts=[x for x in widths(source.num_experts, 0.5) if x >= source.num_experts_per_tok or not x],
                   moe_intermediate_size=widths(source.moe_intermediate_size, min_intermediate, aligned),
                   shared_expert_intermediate_size=widths(source.shared_expert_intermediate_size, min_intermediate))


def parse_param_target(value: int | float | str, source_params: int) -> int:
    """``90M``, ``1.5B``, ``90000000`` (absolute) or ``0.667`` (fraction of the teacher) → a count."""
    text = str(value).strip().replace("_", "")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kKmMbB]?)", text)
    if not match:
        raise CompactLMError(f"target_params={clip(value, 40)}: expected a count (90M, 1.5B, 90000000) or a fraction "
                             f"of the teacher's parameters (0.667).")
    number, unit = float(match[1]), match[2].upper()
    if unit:
        count = int(number * {"K": 1e3, "M": 1e6, "B": 1e9}[unit])
    elif number <= 1:
        count = int(round(number * source_params))
    elif "." not in match[1] and number >= 1000:   # a plain count such as 90000000 (no model has < 1000)
        count = int(number)
    else:   # 2.0 or 5000: a fraction above 1, or a count without a unit? Ask rather than guess.
        raise CompactLMError(f"target_params={clip(value, 40)} is ambiguous: as a fraction of the teacher it is "
                             f"{number:.0%} (more than the whole model), as a count it is {int(number):,} parameters. "
                             f"Give a fraction <= 1 (0.667) or a count with a unit (90M, 1.5B).")
    if not 0 < count < source_params:
        raise CompactLMError(f"target_params={value!r} is {count:,} parameters; it must be between 0 and the "
                             f"teacher's {source_params:,}.")
    return count


def _fits_the_heads(arch: Architecture, source: Architecture) -> bool:
    """The grouped-query layout can be cut from the teacher's (cheap: checked for every combination)."""
    heads, groups = arch.num_attention_heads, arch.num_key_value_heads
    if heads % groups or heads // groups > source.num_attention_heads // source.num_key_value_heads:
        return False
    return not (source.num_key_value_heads % groups and groups != source.num_key_value_heads)


def _family_accepts(arch: Architecture, model_type: str) -> bool:
    """transformers' config class of the family accepts these sizes (~1 ms: checked only for the candidates kept)."""
    try:
        adapter_named(model_type).check_target(arch)
    except CompactLMError:
        return False
    return True


def enumerate_candidates(space: SearchSpace, source: Architecture, layout: ParamLayout, model_type: str,
                         target_params: int | None, tolerance: float = 0.05,
                         max_candidates: int | None = None, active_params: int | None = None,
                         memory: MemoryFit | None = None) -> list[Candidate]:
    """Every valid architecture of ``space`` within ``target_params * (1 ± tolerance)``.

    With ``active_params`` (MoE models) a candidate must also touch ``active_params * (1 ± tolerance)``
    parameters per token; with ``memory`` its deployed memory must fit the budget. Without
    ``target_params`` (a memory budget alone) the target is the largest parameter count that fits
    and the candidates lie within ``target * (1 - 2 tolerance)`` of it, the same width of band.
    Sorted by distance to the target(s), relative. With ``max_candidates``
    only the nearest are kept. Raises with the nearest misses when nothing fits.
    """
    if not 0 <= tolerance < 1:
        raise CompactLMError(f"tolerance={tolerance!r}: expected a fraction in [0, 1), e.g. 0.05 for ±5%.")
    if target_params is None and memory is None:
        raise CompactLMError("A search needs a budget: target_params, or a memory budget (search.memory).")
    combos = []
    for values in itertools.product(*(getattr(space, a) for a in AXES)):
        arch = source.replace(**dict(zip(AXES, values)))
        if _fits_the_heads(arch, source):
            active = count_active_parameters(arch, layout) if source.is_moe else None
            combos.append(Candidate(arch, count_parameters(arch, layout), active))
    band = (1 - tolerance, 1 + tolerance)
    if target_params is None:   # the largest that fits the memory budget sets the target
        target_params = max((c.params for c in combos if memory.fits(c.arch)), default=None)
        band = (1 - 2 * tolerance, 1.0)
        if target_params is None:
            smallest = min(combos, key=lambda c: memory.bytes(c.arch))
            raise CompactLMError(f"No architecture in the search space fits the memory budget "
                                 f"({memory.describe(smallest.arch)}); the smallest is {smallest.name}. Raise the "
                                 f"budget, shorten seq_len or batch, quantize the weights, or widen the search space.")

    def within(count: int, target: int) -> bool:
        return target * band[0] <= count <= target * band[1]

    def distance(c: Candidate) -> float:
        d = abs(c.params / target_params - 1)
        return d + (abs(c.active_params / active_params - 1) if active_params else 0.0)

    inside, outside = [], []
    for c in combos:
        fits = within(c.params, target_params) and (not active_params or within(c.active_params, active_params))
        (inside if fits else outside).append(c)
    if memory is not None:
        over = [c for c in inside if not memory.fits(c.arch)]
        if over and len(over) == len(inside):
            closest = min(over, key=lambda c: memory.bytes(c.arch))
            raise CompactLMError(f"No architecture within the parameter budget fits the memory budget: the closest is "
                                 f"{closest.name} ({memory.describe(closest.arch)}). Raise the memory budget, lower "
                                 f"target_params, shorten seq_len or batch, or quantize the weights.")
        inside = [c for c in inside if memory.fits(c.arch)]
    inside.sort(key=distance)
    accepted = _spread_over_hidden_sizes(inside, max_candidates or len(inside), lambda c: _family_accepts(c.arch, model_type))
    if max_candidates and len(inside) > max_candidates:
        logger.info("%d candidates within ±%.0f%%; keeping %d, the nearest of each hidden size in turn", len(inside),
                    tolerance * 100, max_candidates)
    if not accepted:
        nearest = list(itertools.islice((c for c in sorted(outside, key=distance)
                                         if _family_accepts(c.arch, model_type)), 3))

        def described(c: Candidate) -> str:
            text = f"{c.name} with {c.params / 1e6:.2f}M ({(c.params / target_params - 1) * 100:+.1f}%)"
            if active_params:
                text += f", {c.active_params / 1e6:.2f}M active ({(c.active_params / active_params - 1) * 100:+.1f}%)"
            return text

        budget = f"{target_params / 1e6:.2f}M parameters"
        if active_params:
            budget += f" and {active_params / 1e6:.2f}M active parameters"
        raise CompactLMError(
            f"No architecture in the search space has {budget} ±{tolerance:.0%}. Nearest: "
            f"{'; '.join(described(c) for c in nearest) or 'none (no valid combination)'}. Widen the tolerance, "
            f"move the target, or add sizes to the search space.")
    return accepted


def _spread_over_hidden_sizes(ranked: list[Candidate], keep: int, accepts: Callable[[Candidate], bool]) -> list[Candidate]:
    """The ``keep`` first of ``ranked`` that ``accepts``, taken round-robin over hidden sizes (each size's nearest
    first); ``accepts`` is asked only until ``keep`` are found (it builds a transformers config: ~1 ms each).

    Every candidate is already within the tolerance, so a 0.1% difference in parameter count says
    nothing about quality; taking only the nearest let one hidden size fill the whole cap (on
    SmolLM2 the nine nearest were all hidden 504, and the teacher's 576, whose candidates rank
    better, was never scored). Returned in order of distance.
    """
    groups: dict[int, list[Candidate]] = {}
    for c in ranked:
        groups.setdefault(c.arch.hidden_size, []).append(c)
    valid = [(c for c in g if accepts(c)) for g in groups.values()]   # each size's accepted ones, asked lazily
    chosen: set[int] = set()
    while valid and len(chosen) < keep:
        for it in list(valid):
            c = next(it, None)
            if c is None:
                valid.remove(it)
            elif len(chosen) < keep:
                chosen.add(id(c))
    return [c for c in ranked if id(c) in chosen]


@dataclass(frozen=True)
class MemoryFit:
    """The deployed memory of a candidate against a :class:`~compactlm.config.options.MemoryBudget`."""

    budget: MemoryBudget
    config: object          # the teacher's transformers config: family, biases, tied embeddings, layer kinds

    def bytes(self, arch: Architecture) -> int:
        return deployed_memory(arch, self.config, self.budget).total

    def fits(self, arch: Architecture) -> bool:
        return self.bytes(arch) <= self.budget.limit

    def describe(self, arch: Architecture) -> str:
        b = self.budget
        return (f"{self.bytes(arch) / 1e6:,.1f} MB in {b.weights} with a {b.kv_dtype} KV cache of {b.seq_len:,} tokens "
                f"x {b.batch} against {b.limit / 1e6:,.1f} MB")


def candidates_of(args, source: Architecture, layout: ParamLayout, model_type: str,
                  target_params=None, config=None) -> tuple[SearchSpace, list[Candidate], int, int | None]:
    """(space, candidates, target, active target) of :class:`~compactlm.config.SearchArgs` ``args`` for a teacher.

    ``target_params`` overrides ``args.target_params`` (a recipe step's budget). ``config`` (the
    teacher's) is needed for a memory budget. With a latency budget twice ``max_candidates`` are
    returned: the search measures them and keeps ``max_candidates`` of those that meet it. The one
    place the search and the planner turn settings into candidates.
    """
    given = args.target_params if target_params is None else target_params
    target = None if given is None else parse_param_target(given, count_parameters(source, layout))
    memory = None
    if args.memory is not None:
        if config is None:
            raise CompactLMError("A memory budget needs the teacher's config (candidates_of(..., config=...)).")
        memory = MemoryFit(args.memory, config)
    active = None
    if args.active_params is not None:
        if not source.is_moe:
            raise CompactLMError(f"active_params={args.active_params!r} budgets the parameters a token touches in a "
                                 f"mixture-of-experts model; this {model_type} model is dense (every parameter is "
                                 f"active). Leave it out and budget target_params.")
        active = parse_param_target(args.active_params, count_active_parameters(source, layout))
    space = (SearchSpace.from_dict(args.space.given(), source) if args.space else
             SearchSpace.derive(source, max_depth_cut=args.max_depth_cut, prune_kv_heads=args.prune_kv_heads))
    pool = args.max_candidates * 2 if args.latency is not None and args.max_candidates else args.max_candidates
    candidates = enumerate_candidates(space, source, layout, model_type, target, args.tolerance, pool, active, memory)
    if target is None:   # the memory budget set it: the largest that fits
        target = max(c.params for c in candidates)
    return space, candidates, target, active


__all__ = ["AXES", "Candidate", "MemoryFit", "SearchSpace", "candidates_of", "enumerate_candidates", "parse_param_target"]
