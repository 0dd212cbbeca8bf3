"""Verb ``plan``: will it fit? Search space, candidates and memory per device of every stage, without weights."""

from __future__ import annotations

import argparse

from ..config import AXES, ArchitectureArgs, DataSection, DistillSection, LossArgs, Recipe, StepSection, TrainArgs
from ..config.options import MemoryBudget
from ..deploy import deployed_memory, describe
from ..errors import CompactLMError
from ..recipes import load_recipe, plan_recipe
from ..sizing import device_spec, load_config, meta_model, model_shape, render
from .flags import add_flags, from_flags

PLAN_TRAIN = ("micro_batch_size", "precision", "teacher_dtype")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="memory per device of every stage and strategy, and whether it fits (no weights)",
                       description="For a recipe, or a model (built-in, dir, config.json, hub id) and a target: the "
                                   "search space, the candidate table and, per stage (importance, search proxy, "
                                   "distillation, eval), the memory per device under single/DDP/FSDP/teacher offload, "
                                   "whether it fits and the tokens/s the device's peak rate implies. Reads configs only.")
    p.add_argument("--recipe", help="a YAML recipe or shipped recipe name (llama31-8b-to-4b, mistral-nemo-12b-to-8b, ...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value (repeatable)")
    p.add_argument("--model", help="without --recipe: built-in name, checkpoint dir, config.json or hub id "
                                   "(meta-llama/Llama-3.1-8B and mistralai/Mistral-Nemo-Base-2407 ship offline)")
    p.add_argument("--target-params", default="0.667", help="without --recipe: budget (4.5B, 0.6) (default: %(default)s)")
    add_flags(p.add_argument_group("fixed architecture instead of a budget (without --recipe)"), ArchitectureArgs)
    group = p.add_argument_group("workload (without --recipe)")
    add_flags(group, DataSection, only=("seq_len",))
    add_flags(group, TrainArgs, only=PLAN_TRAIN)
    add_flags(group, LossArgs, only=("chunk_size",))
    group.add_argument("--dtype", default="bfloat16", help="how the models are held: float32 | bfloat16 "
                                                           "(default: %(default)s)")
    dev = p.add_argument_group("device")
    dev.add_argument("--device", default=None, help="cpu (this machine), cuda (the local GPU) or a GPU name: "
                                                    "H100, H200, A100, L40S (default: the recipe's device, else cpu)")
    dev.add_argument("--devices", type=int, default=1, help="device count (default: %(default)s)")
    dev.add_argument("--device-memory", help="memory per device, e.g. 80GB, 40GiB (default: the device's)")
    dev.add_argument("--mfu", type=float, help="assumed model-FLOP utilisation (default: 0.4 GPU, 0.5 CPU)")
    p.add_argument("--show", type=int, default=12, help="candidates to list (default: %(default)s)")
    p.add_argument("--meta", action="store_true",
                   help="also build the teacher on the meta device and check its parameter count against the arithmetic")
    p.set_defaults(func=run_plan)


def _recipe(args: argparse.Namespace):
    if args.recipe:
        return load_recipe(args.recipe, args.overrides)
    if not args.model:
        raise CompactLMError("compactlm plan needs --recipe NAME or --model MODEL (with --target-params or sizes).")
    arch = from_flags(ArchitectureArgs, args)
    fixed = any(v is not None for v in vars(arch).values())
    train = from_flags(TrainArgs, args, only=PLAN_TRAIN)
    distill = DistillSection(loss=from_flags(LossArgs, args, only=("chunk_size",)), train=train)
    step = StepSection(target_params=None if fixed else args.target_params, architecture=arch if fixed else None,
                       distill=distill)
    return Recipe(teacher=args.model, dtype=args.dtype, device=args.device or "cpu",
                  data=DataSection(seq_len=args.seq_len), steps=[step])


def run_plan(args: argparse.Namespace) -> int:
    recipe = _recipe(args)
    config = load_config(recipe.teacher, recipe.trust_remote_code)
    device = args.device or ("cpu" if recipe.device == "cpu" else "cuda")
    spec = device_spec(device, args.devices, args.device_memory, args.mfu,
                       model_config=config if device == "cpu" else None)
    shape = model_shape(config)
    print(f"teacher: {recipe.teacher} ({config.model_type}, {shape.params:,} parameters)")
    if args.meta:
        total = sum(p.numel() for p in meta_model(config).parameters())
        print(f"meta-device skeleton: {total:,} parameters ({'equal to' if total == shape.params else 'DIFFERS from'} "
              f"the arithmetic)")
    for section, step in zip(recipe.steps, plan_recipe(recipe, spec, config)):
        budget = section.search.memory
        print(f"\n== step {step.name} ==")
        if step.space is not None:
            print(f"target {step.target_params:,} parameters; search space: "
                  + "; ".join(f"{a} {v}" for a, v in step.space.to_dict().items()))
            print(f"{len(step.candidates)} candidates (nearest the target first):")
            deployed = f"{f'deployed MB ({budget.weights})':>22}" if budget else ""
            print(f"  {'name':<28}{'params':>16}{'of teacher':>12}{deployed}")
            for c in step.candidates[:args.show]:
                deployed = f"{deployed_memory(c.arch, config, budget).total / 1e6:>22,.1f}" if budget else ""
                print(f"  {c.name:<28}{c.params:>16,}{c.params / step.plan.teacher.params:>12.1%}{deployed}")
        else:
            print("fixed architecture: " + ", ".join(f"{a} {getattr(step.plan.student.arch, a)}" for a in AXES))
        print(_deployed_line(step, config, budget, recipe.data.seq_len))
        print()
        print(render(step.plan))
    return 0


def _deployed_line(step, config, budget: MemoryBudget | None, seq_len: int) -> str:
    """The deployed memory of the step's fixed student, or of its first candidate: under the step's memory budget,
    else bfloat16 weights at the recipe's seq_len x 1 (the teacher's ``config`` gives family and layer kinds)."""
    arch = step.candidates[0].arch if step.space is not None else step.plan.student.arch
    shown = budget or MemoryBudget(limit=2**62, seq_len=seq_len)   # no budget: its limit is never read
    memory = deployed_memory(arch, config, shown)
    line = f"deployed: {describe(memory, shown)}"
    if budget is not None:
        line += f" (limit {budget.limit / 1e6:,.1f} MB: {'fits' if memory.total <= budget.limit else 'over'})"
    return line + (f" for {step.candidates[0].name}, the first candidate" if step.space is not None else "")
