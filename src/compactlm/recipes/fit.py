"""Plans of a recipe (search space, candidates, memory per step) and the check ``run``/``distill`` make first.

No weights are read: the teacher's config comes from :func:`.source.load_config`, the candidates
from the exact parameter arithmetic. A step planned by budget is sized by its largest candidate
(the most memory any candidate of the search needs); the next step's teacher is that student.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass

from ..config import Recipe, StepSection
from ..errors import CompactLMError
from ..hardware import native_bf16
from ..prune import PruneTarget
from ..search import Candidate, SearchSpace, candidates_of
from ..sizing import (
    DeviceSpec,
    ModelShape,
    Plan,
    Workload,
    build_plan,
    check_fits,
    device_spec,
    load_config,
    local_device,
    model_shape,
)

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


def _student(step: StepSection, teacher: ModelShape, model_type: str, where: str = "", config=None):
    """(student shape, space, candidates, target) of one step: its fixed architecture (refused as ``prune`` refuses
    it: larger than the teacher, heads that do not divide, sizes the family cannot hold) or its largest candidate."""
    if step.architecture is not None:
        arch = PruneTarget.of(step.architecture).check(teacher.arch, model_type, where)
        return ModelShape(arch, teacher.layout), None, [], None
    args = dataclasses.replace(step.search, target_params=step.target_params)   # None: a memory budget alone
    space, candidates, target, _ = candidates_of(args, teacher.arch, teacher.layout, model_type, config=config)
    largest = max(candidates, key=lambda c: c.params)
    return ModelShape(largest.arch, teacher.layout), space, candidates, target


def plan_recipe(recipe: Recipe, device: DeviceSpec | None = None, config=None) -> list[StepPlan]:
    """One :class:`StepPlan` per step of ``recipe`` on ``device`` (default: the recipe's device, this machine)."""
    config = config if config is not None else load_config(recipe.teacher, recipe.trust_remote_code)
    device = device or device_spec("cuda" if recipe.device.startswith("cuda") else "cpu",
                                   count=int(os.environ.get("WORLD_SIZE", "1")), model_config=None)
    teacher, where = model_shape(config), f" (the teacher '{recipe.teacher}')"
    plans = []
    for step in recipe.steps:
        student, space, candidates, target = _student(step, teacher, config.model_type, where, config)
        work = recipe_workload(recipe, step, device, teacher, student)
        plans.append(StepPlan(step.name, space, candidates, target, build_plan(teacher, student, work, device,
                                                                              label=f"step {step.name}")))
        teacher, where = student, f" (the student of step '{step.name}')"
    return plans


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


