"""A tiny end-to-end recipe: a random llama checkpoint, a text file, budgets of a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from compactlm.recipes.records import RunState
from compactlm.recipes.run_dir import RunLayout


def write_tiny_recipe(folder: Path, teacher: Path, text: Path, **changes) -> Path:
    recipe = {
        "teacher": str(teacher),
        "data": {"source": str(text), "seq_len": 32, "heldout_samples": 4, "seed": 0},
        "importance": {"samples": 8, "batch_size": 4, "layer_loss_samples": 2},
        "steps": [{
            "name": "student",
            "target_params": 0.8,
            "search": {"tolerance": 0.1, "max_depth_cut": 0.25, "max_candidates": 6, "top_k": 2,
                       "distill_tokens": 256},
            "distill": {"tokens": 512, "train": {"batch_size": 2, "micro_batch_size": 2, "precision": "fp32",
                                                 "lr": 1e-3, "min_lr": 1e-4, "val_every": 4, "checkpoint_every": 2}},
        }],
        "eval": {"tasks": [f"ppl:{text}"], "limit": 4, "window": 32, "batch_size": 4},
    }
    for key, value in changes.items():
        recipe[key] = value
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def read_state(layout: RunLayout) -> RunState:
    """``run_state.json`` of a run, as typed records."""
    return RunState.from_dict(json.loads(layout.state.read_text()))
