"""Will this run fit? The checks ``run`` and ``distill`` make before loading anything, and the strategy ``auto`` picks.

A plan (:class:`~.table.Plan`) holds every stage's memory under every strategy; these functions
read it for the strategy the trainer will really use (:func:`configured_strategy`) and refuse,
with the plan printed, what cannot fit.
"""

from __future__ import annotations

import logging
import os

import torch

from ..errors import CompactLMError
from ..hardware import native_bf16
from .device import DeviceSpec, device_spec
from .memory import STAGES, STRATEGIES, Strategy, Workload, stage_memory
from .source import load_config, model_shape
from .table import Plan, build_plan, render

logger = logging.getLogger(__name__)


def _cheapest(plan: Plan, stages: tuple[str, ...]) -> Strategy | None:
    return next((st for st in plan.strategies() if all(plan.fits(plan.row(s, st.name)) for s in stages)), None)


def configured_strategy(plan: Plan, train, stages: tuple[str, ...] = STAGES) -> Strategy:
    """What the trainer will use (:func:`compactlm.distill.sharding.resolve_strategy`): one process trains the plain model
    with a replicated teacher; several use TrainArgs' strategy and teacher_placement (auto: the cheapest that fits)."""
    if plan.device.count == 1:
        return STRATEGIES["single"]
    strategy = getattr(train, "strategy", "ddp")
    if strategy == "auto":
        return _cheapest(plan, stages) or STRATEGIES["ddp"]
    if strategy == "ddp":
        return STRATEGIES["ddp"]
    placement = getattr(train, "teacher_placement", "shard")
    return Strategy(f"fsdp/{placement}", "fsdp", placement)


def check_fits(plan: Plan, train, what: str, stages: tuple[str, ...] = STAGES) -> None:
    """Raise (exit 2) with the plan when the configured strategy cannot fit some stage; name the cheapest that does."""
    chosen = configured_strategy(plan, train, stages)
    best = _cheapest(plan, stages)
    rows = [stage_memory(s, plan.teacher, plan.student, plan.work, chosen, plan.device.count) for s in stages]
    if all(plan.fits(r) for r in rows):
        logger.info("plan: %s fits %s with strategy %s", what, plan.device.describe(), chosen.name)
        return
    if best is None:
        advice = ("no strategy fits: lower micro_batch_size or seq_len, set chunk_size, use bf16, or more/larger "
                  "devices")
    else:
        advice = (f"the cheapest strategy that fits is '{best.name}' (strategy: {best.strategy}, teacher_placement: "
                  f"{best.teacher_placement}" + (", with several processes: torchrun --nproc_per_node N"
                                                 if plan.device.count == 1 and best.name != "single" else "") + ")")
    raise CompactLMError(f"{what} does not fit in memory with strategy '{chosen.name}'; {advice}. "
                         f"Skip this check with --no-plan-check.\n"
                         + render(plan))


def local_device(device: str) -> DeviceSpec:
    """The device a run on this machine uses: its RAM or GPU memory, and WORLD_SIZE processes (torchrun)."""

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device_spec("cpu" if device == "cpu" else device, count=world)


def check_distill(teacher: str, student: str, train, loss, seq_len: int, dtype: str = "float32",
                  trust_remote_code: bool = False) -> Plan | None:
    """Refuse a distillation (``compactlm distill``) that cannot fit on its device; only that stage is checked."""
    try:
        t, s = (model_shape(load_config(m, trust_remote_code)) for m in (teacher, student))
    except CompactLMError as err:
        logger.debug("plan check skipped (loading the model reports it): %s", err)
        return None
    device = local_device(train.device)
    precision = train.precision if train.precision != "auto" else (
        "bf16" if device.type == "cuda" or native_bf16("cpu") else "fp32")
    deeper = s.arch.num_hidden_layers < t.arch.num_hidden_layers
    work = Workload(micro_batch=train.micro_batch_size, seq_len=seq_len, precision=precision, dtype=dtype,
                    teacher_dtype=dtype if train.teacher_dtype == "auto" else train.teacher_dtype,
                    chunk_size=loss.chunk_size, device_type=device.type,
                    intermediate=loss.intermediate == "on" or (loss.intermediate == "auto" and deeper))
    plan = build_plan(t, s, work, device, label="distill")
    check_fits(plan, train, "this distillation", stages=("distillation",))
    return plan


def choose_strategy(args, info, student, teacher, seq_len: int, precision: str) -> str:
    """``ddp`` or ``fsdp`` for ``strategy: auto`` (called by :func:`compactlm.distill.sharding.resolve_strategy`): ddp when
    the distillation of ``seq_len``-token blocks in ``precision`` (bf16 | fp32, resolved) fits each device with
    everything replicated, else fsdp. Every process decides from the same inputs, so they agree."""
    if teacher is None:
        return "ddp"
    device = local_device(info.device.type)
    device = DeviceSpec(device.name, device.type, device.memory, info.world_size, device.peak_tflops, device.mfu)
    work = Workload(micro_batch=args.micro_batch_size, seq_len=seq_len, precision=precision, device_type=device.type,
                    teacher_dtype={"bf16": "bf16", "fp32": "float32"}.get(args.teacher_dtype, str(
                        next(teacher.parameters()).dtype).removeprefix("torch.")))
    plan = build_plan(model_shape(teacher.config), model_shape(student.config), work, device)
    return "ddp" if plan.fits(plan.row("distillation", "ddp")) else "fsdp"
