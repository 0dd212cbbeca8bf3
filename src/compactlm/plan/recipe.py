"""Plans of a recipe (search space, candidates, memory per step) and the check ``run``/``distill`` make first.

No weights are read: the teacher's config comes from :func:`.source.load_config`, the candidates
from the exact parameter arithmetic. A step planned by budget is sized by its largest candidate
(the most memory any candidate of the search needs); the next step's teacher is that student.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ..config import AXES, Recipe, StepSection
from ..errors import CompactLMError
from ..search import Candidate, SearchSpace, candidates_of
from .device import DeviceSpec, device_spec
from .memory import STAGES, STRATEGIES, ModelShape, Strategy, Workload, stage_memory
from .report import Plan, build_plan, render
from .source import load_config, model_shape

logger = logging.getLogger(__name__)


@dataclass
class StepPlan:
    name: str
    space: SearchSpace | None
    candidates: list[Candidate]
    target_params: int | None
    plan: Plan


def recipe_workload(recipe: Recipe, step: StepSection, device: DeviceSpec, teacher: ModelShape,
                    student: ModelShape) -> Workload:
    """The per-micro-batch sizes of a recipe step; precision auto is bf16 where the device runs it natively."""
    from ..hardware import native_bf16

    train, loss = step.distill.train, step.distill.loss
    native = device.type == "cuda" or native_bf16("cpu")
    precision = train.precision if train.precision != "auto" else ("bf16" if native else "fp32")
    teacher_dtype = recipe.dtype if train.teacher_dtype == "auto" else train.teacher_dtype
    deeper = student.arch.num_hidden_layers < teacher.arch.num_hidden_layers
    imp = recipe.importance
    return Workload(micro_batch=train.micro_batch_size, seq_len=recipe.data.seq_len, precision=precision,
                    dtype=recipe.dtype, teacher_dtype=teacher_dtype, chunk_size=loss.chunk_size,
                    intermediate=loss.intermediate == "on" or (loss.intermediate == "auto" and deeper),
                    importance_batch=imp.batch_size, seq_aggregations=len(imp.seq_aggregations.split(",")),
                    layer_loss=imp.layer_loss_samples > 0, proxy_batch=8, eval_batch=recipe.eval.batch_size,
                    eval_window=recipe.eval.window, device_type=device.type)


def _student(step: StepSection, teacher: ModelShape, model_type: str):
    """(student shape, space, candidates, target) of one step: its fixed architecture or its largest candidate."""
    if step.architecture is not None:
        sizes = {a: getattr(step.architecture, a) for a in AXES}
        return ModelShape(teacher.arch.replace(**sizes), teacher.layout), None, [], None
    space, candidates, target, _ = candidates_of(step.search, teacher.arch, teacher.layout, model_type,
                                                 step.target_params)
    largest = max(candidates, key=lambda c: c.params)
    return ModelShape(largest.arch, teacher.layout), space, candidates, target


def plan_recipe(recipe: Recipe, device: DeviceSpec | None = None, config=None) -> list[StepPlan]:
    """One :class:`StepPlan` per step of ``recipe`` on ``device`` (default: the recipe's device, this machine)."""
    config = config if config is not None else load_config(recipe.teacher, recipe.trust_remote_code)
    device = device or device_spec("cuda" if recipe.device.startswith("cuda") else "cpu",
                                   count=int(os.environ.get("WORLD_SIZE", "1")), model_config=None)
    teacher = model_shape(config)
    plans = []
    for step in recipe.steps:
        student, space, candidates, target = _student(step, teacher, config.model_type)
        work = recipe_workload(recipe, step, device, teacher, student)
        plans.append(StepPlan(step.name, space, candidates, target, build_plan(teacher, student, work, device,
                                                                              label=f"step {step.name}")))
        teacher = student
    return plans


def _cheapest(plan: Plan, stages: tuple[str, ...]) -> Strategy | None:
    return next((st for st in plan.strategies() if all(plan.fits(plan.row(s, st.name)) for s in stages)), None)


def configured_strategy(plan: Plan, train, stages: tuple[str, ...] = STAGES) -> Strategy:
    """What the trainer will use (``distill/distributed.py:resolve_strategy``): one process trains the plain model
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
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device_spec("cpu" if device == "cpu" else device, count=world)


def check_recipe(recipe: Recipe) -> list[StepPlan]:
    """Refuse (:class:`CompactLMError`, exit 2) a recipe some step of which cannot fit on its device."""
    try:
        config = load_config(recipe.teacher, recipe.trust_remote_code)
    except CompactLMError as err:    # loading the teacher will say it better
        logger.debug("plan check skipped (loading the model reports it): %s", err)
        return []
    plans = plan_recipe(recipe, local_device(recipe.device), config)
    for step, planned in zip(recipe.steps, plans):
        check_fits(planned.plan, step.distill.train, f"recipe step '{step.name}'")
    return plans


def check_distill(teacher: str, student: str, train, loss, seq_len: int, dtype: str = "float32",
                  trust_remote_code: bool = False) -> Plan | None:
    """Refuse a distillation (``compactlm distill``) that cannot fit on its device; only that stage is checked."""
    from ..hardware import native_bf16

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
    """``ddp`` or ``fsdp`` for ``strategy: auto`` (called by ``distill/distributed.py:resolve_strategy``): ddp when
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
