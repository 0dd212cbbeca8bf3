"""Will it fit? Memory per device of every stage under every strategy, from the config alone (no weights).

``memory``  the memory model, term by term, per stage and strategy
``device``  the device a plan is for: memory, count, peak FLOP rate, assumed MFU
``source``  a model's config without weights (shipped paper configs, config.json, dir, GGUF, hub)
``report``  a plan of one step, its table, :func:`cheapest_fitting`
``recipe``  the plans of a recipe's steps, and the check ``run``/``distill`` make before loading anything
"""

from .device import GPUS, DeviceSpec, device_spec, host_memory, parse_memory
from .memory import STAGES, STRATEGIES, ModelShape, StageMemory, Strategy, Workload, stage_memory
from .recipe import StepPlan, check_distill, check_fits, check_recipe, choose_strategy, plan_recipe
from .report import Plan, build_plan, cheapest_fitting, render
from .source import SHIPPED_CONFIGS, load_config, meta_model, model_shape

__all__ = ["GPUS", "SHIPPED_CONFIGS", "STAGES", "STRATEGIES", "DeviceSpec", "ModelShape", "Plan", "StageMemory",
           "StepPlan", "Strategy", "Workload", "build_plan", "cheapest_fitting", "check_distill", "check_fits",
           "check_recipe", "choose_strategy", "device_spec", "host_memory", "load_config", "meta_model", "model_shape",
           "parse_memory", "plan_recipe", "render", "stage_memory"]
