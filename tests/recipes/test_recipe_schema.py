"""Recipes: every shipped one parses; mistakes name the key; --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from compactlm.cli import main
from compactlm.errors import CompactLMError
from compactlm.recipes import load_recipe
from compactlm.recipes.schema import SHIPPED


@pytest.mark.parametrize("path", sorted(SHIPPED.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_parses(path):
    recipe = load_recipe(path)
    assert recipe.steps and recipe.teacher
    assert load_recipe(path.stem).to_dict() == recipe.to_dict()


def test_default_recipe_targets_two_thirds_of_the_embedded_teacher():
    recipe = load_recipe(None)
    assert recipe.teacher == "smollm2-135m" and recipe.data.source.startswith("exllamav2:")
    assert float(recipe.steps[0].target_params) == pytest.approx(2 / 3, abs=0.01)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("teacher: x\nstepz: []\n", "recipe key 'stepz'.*Did you mean 'steps'"),
    ("steps:\n  - distill: {tokenz: 5}\n", r"recipe key 'steps\[0\].distill.tokenz'.*Did you mean 'tokens'"),
    ("steps:\n  - distill: {train: {lr: fast}}\n",
     r"recipe key 'steps\[0\].distill.train.lr': expected a float \(e.g. 3e-4\), got 'fast'"),
    ("data: {seq_len: [1]}\n", r"recipe key 'data.seq_len': expected an integer, got \[1\]"),
    # an integer key is not a token count, and the message names the key (not --tokens)
    ("data: {seq_len: fast}\n", "recipe key 'data.seq_len': expected an integer, got 'fast'"),
    ("eval: {limit: 1K}\n", "recipe key 'eval.limit': expected an integer, got '1K'"),
    ("data: {seq_len: true}\n", "recipe key 'data.seq_len': expected an integer, got True"),
    ("steps:\n  - distill: {tokens: lots}\n", r"recipe key 'steps\[0\].distill.tokens': 'lots' is not a token count"),
    ("data: {heldout_samples: 0}\n", "recipe key 'data.heldout_samples': expected greater than or equal to 1, got 0"),
    ("steps:\n  - search: {tolerance: 2}\n", r"recipe key 'steps\[0\].search.tolerance': expected less than 1, got 2"),
    ("precision: fp16\n", "recipe key 'precision': expected 'auto', 'bf16' or 'fp32', got 'fp16'"),
    ("steps:\n  - distill: {init: scratch}\n", r"steps\[0\].distill.init': expected 'search' or 'pruned'"),
    ("steps: []\n", "'steps' is empty"),
    ("steps:\n  - {name: a}\n  - {name: a}\n", "repeat"),
    ("steps:\n  - {target_params: null}\n", "give 'target_params'"),
    ("steps:\n  - {architecture: {hidden: 3}}\n",
     r"recipe key 'steps\[0\].architecture.hidden': Unknown key 'hidden'. Did you mean 'hidden_size'"),
    ("steps:\n  - {architecture: {hidden_size: 0}}\n",
     r"steps\[0\].architecture.hidden_size': expected greater than or equal to 1, got 0"),
    # keys the pipeline sets itself are refused, naming the key to use instead
    ("steps:\n  - search: {target_params: 0.5}\n",
     r"steps\[0\].search.target_params=0.5 is set by the pipeline.*give steps\[0\].target_params instead"),
    ("steps:\n  - distill: {train: {max_steps: 9}}\n",
     r"steps\[0\].distill.train.max_steps=9 is set by the pipeline.*steps\[0\].distill.tokens"),
    ("importance: {criterion: magnitud}\n", "importance.criterion: Unknown criterion 'magnitud'. Did you mean 'magnitude'"),
    ("importance: {depth_tasks: [winogrand]}\n", r"importance.depth_tasks\[0\]: Unknown task 'winogrand'"),
    ("data: [\n", "not valid YAML"),
])
def test_mistakes_name_the_key(tmp_path, text, message):
    with pytest.raises(CompactLMError, match=message):
        load_recipe(_write(tmp_path, text))


def test_values_and_overrides(tmp_path):
    recipe = load_recipe(_write(tmp_path, "steps:\n  - distill: {tokens: 256K, train: {lr: 3e-4}}\n"),
                         ["steps.0.search.top_k=1", "eval.tasks=[arc_easy]", "data.seq_len=128"])
    assert recipe.steps[0].distill.tokens == 256_000 and recipe.steps[0].distill.train.lr == 3e-4
    assert recipe.steps[0].search.top_k == 1 and recipe.eval.tasks == ["arc_easy"] and recipe.data.seq_len == 128
    with pytest.raises(CompactLMError, match="--set 'nonsense'"):
        load_recipe(None, ["nonsense"])


def test_unknown_recipe_name_lists_the_shipped_ones(tmp_path, capsys):
    assert main(["run", "no-such-recipe", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "no-such-recipe" in err and "default" in err and "iterative" in err
    assert not (tmp_path / "x").exists()


def test_importance_section_is_what_estimate_importance_reads():
    """The recipe section goes to the importance pass whole: each option it sets shows in the scores."""
    import torch
    from helpers import make_tiny_model

    from compactlm.config import ImportanceSection
    from compactlm.importance import estimate_importance

    model = make_tiny_model("llama", dtype=torch.float32, seed=0)
    blocks = torch.randint(3, 128, (4, 8), generator=torch.Generator().manual_seed(0))
    options = ImportanceSection(criterion="random", seed=3, layer_loss_samples=2, seq_aggregations="mean,l2",
                                batch_size=2)
    scores = estimate_importance(model, blocks, options, show_progress=False)
    meta = scores.meta
    assert meta["criterion"] == "random" and meta["seed"] == 3 and meta["layer_loss_samples"] == 2
    assert meta["seq_aggregations"] == ["mean", "l2"] and "layers.loss" in scores.tensors
    plain = estimate_importance(model, blocks, ImportanceSection(layer_loss_samples=0), show_progress=False)
    assert plain.meta["criterion"] == "activation" and "layers.loss" not in plain.tensors


def test_run_refuses_to_start_as_several_processes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["run", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "started as 2 processes (WORLD_SIZE=2)" in err and "distill --strategy fsdp" in err
    assert not (tmp_path / "x").exists()
