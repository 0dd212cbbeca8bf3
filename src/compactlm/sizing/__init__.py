"""Will it fit? Memory per device of every stage under every strategy, from the config alone (no weights).

This is the memory planner behind ``compactlm plan`` (not the prune plan, :class:`compactlm.prune.PrunePlan`).

``memory``  the memory model, term by term, per stage and strategy
``device``  the device a plan is for: memory, count, peak FLOP rate, assumed MFU
``source``  a model's config without weights (shipped paper configs, config.json, dir, GGUF, hub)
``table``   a plan of one model pair (:class:`Plan`), its table, :func:`cheapest_fitting`
``fit``     the strategy the trainer will use, the checks ``run``/``distill`` make before loading anything

A recipe's plans (every step, its search space and candidates) are :func:`compactlm.recipes.plan_recipe`.
"""

from .device import GPUS, DeviceSpec, device_spec, host_memory, parse_memory
from .fit import check_distill, check_fits, choose_strategy, configured_strategy, local_device
from .memory import STAGES, STRATEGIES, ModelShape, StageMemory, Strategy, Workload, stage_memory
from .source import SHIPPED_CONFIGS, load_config, meta_model, model_shape
from .table import Plan, build_plan, cheapest_fitting, render

__all__ = ["GPUS", "SHIPPED_CONFIGS", "STAGES", "STRATEGIES", "DeviceSpec", "ModelShape", "Plan", "StageMemory",
           "Strategy", "Workload", "build_plan", "cheapest_fitting", "check_distill", "check_fits", "choose_strategy",
           "configured_strategy", "device_spec", "host_memory", "load_config", "local_device", "meta_model",
           "model_shape", "parse_memory", "render", "stage_memory"]
