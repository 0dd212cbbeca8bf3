"""Parameter arithmetic equals the real count; the space and the budget filter behave."""

from __future__ import annotations

import pytest
import torch
from helpers import make_tiny_model

from compactlm import parameter_breakdown
from compactlm.arch import adapter_for
from compactlm.errors import CompactLMError
from compactlm.prune import PrunePlan, select_units
from compactlm.prune.apply import apply_plan
from compactlm.search import (
    SearchSpace,
    count_parameters,
    enumerate_candidates,
    parameter_counts,
    parameter_layout,
    parse_param_target,
    spearman,
)

TARGETS = [
    {},
    {"intermediate_size": 40},
    {"num_attention_heads": 2},
    {"num_key_value_heads": 1, "num_attention_heads": 2},
    {"hidden_size": 48},
    {"num_hidden_layers": 2},
    {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 3},
]


def _prune(model, **sizes):
    a = adapter_for(model.config)
    source = a.architecture(model.config)
    target = source.replace(**sizes)
    torch.manual_seed(0)
    plan = select_units(source, target, layers=list(range(target.num_hidden_layers)),
                        neurons=torch.rand(source.num_hidden_layers, source.intermediate_size),
                        heads=torch.rand(source.num_hidden_layers, source.num_attention_heads),
                        channels=torch.rand(source.hidden_size))
    assert isinstance(plan, PrunePlan)
    return apply_plan(model, plan)


@pytest.mark.parametrize("sizes", TARGETS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "none")
def test_count_equals_real_model(family, sizes):
    model = make_tiny_model(family, dtype=torch.float32)
    student = _prune(model, **sizes)
    arch = adapter_for(student.config).architecture(student.config)
    counted = parameter_counts(arch, parameter_layout(student.config))
    assert counted == parameter_breakdown(student)
    assert count_parameters(arch, parameter_layout(student.config)) == student.num_parameters()


def test_parse_param_target():
    assert parse_param_target("90M", 135_000_000) == 90_000_000
    assert parse_param_target("0.5", 1000) == 500
    assert parse_param_target(0.667, 3000) == 2001
    assert parse_param_target("1.2B", 8_000_000_000) == 1_200_000_000
    assert parse_param_target(7000, 10_000) == 7000
    for bad in ("lots", "2000", "-1", "0", "2.0", 700):
        with pytest.raises(CompactLMError, match="target_params"):
            parse_param_target(bad, 1000)
    with pytest.raises(CompactLMError, match="ambiguous.*200%.*2 parameters"):   # both readings shown
        parse_param_target("2.0", 1000)


def _source_and_layout(family="llama"):
    model = make_tiny_model(family, dtype=torch.float32)
    return adapter_for(model.config).architecture(model.config), parameter_layout(model.config), model.config.model_type


def test_derived_space_is_valid_and_includes_the_source():
    source, _, _ = _source_and_layout()
    space = SearchSpace.derive(source, max_depth_cut=0.5)
    assert space.hidden_size[0] == 64 and min(space.hidden_size) >= 32
    assert space.intermediate_size[0] == 96 and min(space.intermediate_size) >= 24
    assert all(h % 2 == 0 for h in space.num_attention_heads) and space.num_key_value_heads == [2]
    assert space.num_hidden_layers == [4, 3, 2]
    assert SearchSpace.derive(source, prune_kv_heads=True).num_key_value_heads == [2, 1]


def test_candidates_lie_within_tolerance_and_are_buildable():
    source, layout, model_type = _source_and_layout()
    total = count_parameters(source, layout)
    target = int(0.75 * total)
    candidates = enumerate_candidates(SearchSpace.derive(source, max_depth_cut=0.5), source, layout, model_type,
                                      target, 0.05)
    assert candidates and all(abs(c.params - target) <= 0.05 * target for c in candidates)
    distances = [abs(c.params - target) for c in candidates]
    assert distances == sorted(distances)
    assert len(enumerate_candidates(SearchSpace.derive(source, max_depth_cut=0.5), source, layout, model_type,
                                    target, 0.05, max_candidates=2)) == 2
    assert len({c.name for c in candidates}) == len(candidates)


def test_empty_candidate_set_names_the_nearest():
    source, layout, model_type = _source_and_layout()
    space = SearchSpace.from_dict({"intermediate_size": [96, 48]}, source)
    with pytest.raises(CompactLMError, match=r"No architecture .* Nearest: f?h64-f48.*%\)"):
        enumerate_candidates(space, source, layout, model_type, int(0.6 * count_parameters(source, layout)), 0.01)


def test_explicit_space_is_checked():
    source, _, _ = _source_and_layout()
    with pytest.raises(CompactLMError, match="Unknown search-space axis"):
        SearchSpace.from_dict({"hiden_size": [32]}, source)
    with pytest.raises(CompactLMError, match="intermediate_size=\\[200\\]"):
        SearchSpace.from_dict({"intermediate_size": [200]}, source)


def test_spearman():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1.0], [2.0]) is None
