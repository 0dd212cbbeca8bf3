"""A plan: every stage under every strategy on a device, whether it fits, the throughput; and its table.

Throughput: model FLOPs per token (:mod:`compactlm.hardware`'s 2N/6N rule, N = matmul weights,
from the config): importance 2 N_T without the LM head, search proxy 2 N_candidate, distillation
2 N_T + 6 N_S, eval 2 N_S; tokens/s per device = peak FLOP/s x assumed MFU / FLOPs per token,
times the devices for the data-parallel strategies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .device import DeviceSpec
from .memory import (
    STAGES,
    STRATEGIES,
    STRATEGY_ORDER,
    GiB,
    ModelShape,
    StageMemory,
    Strategy,
    Workload,
    stage_memory,
)


@dataclass
class Plan:
    """Memory per device of every (stage, strategy), for one teacher → student step on ``device``."""

    teacher: ModelShape
    student: ModelShape
    work: Workload
    device: DeviceSpec
    rows: list[StageMemory] = field(default_factory=list)
    label: str = ""

    def strategies(self) -> list[Strategy]:
        """Single on one device; with several, the data-parallel ones (single is then shown but not chosen)."""
        names = ("single", "offload") if self.device.count == 1 else STRATEGY_ORDER[1:]
        return [STRATEGIES[n] for n in names]

    def fits(self, row: StageMemory) -> bool:
        return row.total <= self.device.memory

    def row(self, stage: str, strategy: str) -> StageMemory:
        return next(r for r in self.rows if r.stage == stage and r.strategy.name == strategy)

    def flops_per_token(self, stage: str) -> int:
        t, s = self.teacher, self.student
        return {"importance": 2 * (t.matmul_params - t.head_params), "search proxy": 2 * s.matmul_params,
                "distillation": 2 * t.matmul_params + 6 * s.matmul_params, "eval": 2 * s.matmul_params}[stage]

    def tokens_per_second(self, stage: str, strategy: Strategy) -> float | None:
        peak = (self.device.peak_tflops or {}).get(self.work.precision)
        if not peak:
            return None
        devices = 1 if strategy.parallel == "single" else self.device.count
        return peak * 1e12 * self.device.mfu / self.flops_per_token(stage) * devices


def build_plan(teacher: ModelShape, student: ModelShape, work: Workload, device: DeviceSpec, label: str = "") -> Plan:
    plan = Plan(teacher, student, work, device, label=label)
    names = ["single", *[n for n in STRATEGY_ORDER if n != "single"]] if device.count > 1 else ["single", "offload"]
    plan.rows = [stage_memory(stage, teacher, student, work, STRATEGIES[name], device.count)
                 for stage in STAGES for name in names]
    return plan


def cheapest_fitting(plan: Plan, stage: str | None = None) -> Strategy | None:
    """The cheapest strategy (single, ddp, fsdp, offload in that order) under which ``stage`` fits, or every stage."""
    stages = [stage] if stage else list(STAGES)
    for strategy in plan.strategies():
        if all(plan.fits(plan.row(s, strategy.name)) for s in stages):
            return strategy
    return None


TERMS = (("weights", ("weights", "autocast", "fsdp_unit")), ("grads+opt", ("gradients", "optimizer", "ddp_buckets")),
         ("teacher", ("teacher",)), ("activations", ("activations", "accumulators")), ("logits", ("logits", "kd_loss")),
         ("runtime", ("runtime",)))


def _gib(value: int) -> str:
    return f"{value / GiB:.1f}"


def render(plan: Plan) -> str:
    """The plan as a table: GiB per device by term, total, fits, tokens/s."""
    w, t, s = plan.work, plan.teacher, plan.student
    head = [f"teacher {t.params:,} parameters -> student {s.params:,} ({s.params / t.params:.1%})"
            + (f"  [{plan.label}]" if plan.label else ""),
            f"device: {plan.device.describe()}",
            f"workload: {w.precision}, micro-batch {w.micro_batch} x {w.seq_len} tokens, teacher {w.teacher_dtype}, "
            f"KD chunk {w.chunk_size or 'off'}, importance batch {w.importance_batch}, eval {w.eval_batch} x "
            f"{w.eval_window}"]
    cols = [name for name, _ in TERMS]
    lines = [f"{'stage':<14}{'strategy':<10}" + "".join(f"{c:>12}" for c in cols)
             + f"{'total GiB':>11}{'fits':>6}{'tokens/s':>12}"]
    for row in plan.rows:
        values = [sum(row.terms.get(k, 0) for k in keys) for _, keys in TERMS]
        rate = plan.tokens_per_second(row.stage, row.strategy)
        lines.append(f"{row.stage:<14}{row.strategy.name:<10}" + "".join(f"{_gib(v):>12}" for v in values)
                     + f"{_gib(row.total):>11}{'yes' if plan.fits(row) else 'NO':>6}"
                     + f"{(f'{rate:,.0f}' if rate else '-'):>12}")
    best = cheapest_fitting(plan)
    per_stage = ", ".join(f"{stage}: {(cheapest_fitting(plan, stage) or Strategy('none', '', '')).name}"
                          for stage in STAGES)
    lines.append(f"cheapest strategy that fits every stage: {best.name if best else 'none'}  ({per_stage})")
    return "\n".join([*head, *lines])
