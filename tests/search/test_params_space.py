"""Parameter arithmetic equals the real count; the space and the budget filter behave."""

from __future__ import annotations

import pytest
import torch
from helpers import FAMILIES, MOE_FAMILIES, make_tiny_model, random_plan

from compactlm import parameter_breakdown
from compactlm.arch import adapter_for
from compactlm.errors import CompactLMError
from compactlm.prune import PrunePlan
from compactlm.prune.apply import apply_plan
from compactlm.search import (
    SearchSpace,
    count_active_parameters,
    count_parameters,
    enumerate_candidates,
    parameter_counts,
    parameter_layout,
    parse_param_target,
    spearman,
)

# sizes of random_plan (helpers); hidden 32 with 2 heads keeps OLMoE's hidden = heads x head_dim
TARGETS = [
    {},
    {"heads": 2, "hidden": 32},
    {"groups": 1, "heads": 2},
    {"hidden": 48},
    {"layers": 2},
]
DENSE_TARGETS = [{"neurons": 40}, {"hidden": 32, "neurons": 64, "heads": 2, "layers": 3}]
MOE_TARGETS = [{"experts": 3}, {"moe_neurons": 24}, {"hidden": 32, "experts": 2, "moe_neurons": 16, "heads": 2, "layers": 3}]
SHARED_TARGETS = [{"shared": 24}, {"hidden": 32, "experts": 2, "moe_neurons": 16, "shared": 16, "heads": 2}]
CASES = [(family, sizes) for family in sorted(FAMILIES)
         for sizes in TARGETS + (MOE_TARGETS if family in MOE_FAMILIES else DENSE_TARGETS)
         + (SHARED_TARGETS if family == "qwen2_moe" else [])
         # OLMoE needs hidden = heads x head_dim (16)
         if not (family == "olmoe" and sizes and sizes.get("hidden") != 16 * sizes.get("heads", 4))]


@pytest.mark.parametrize(("family", "sizes"), CASES,
                         ids=[f + ":" + (",".join(f"{k}={v}" for k, v in s.items()) or "none") for f, s in CASES])
def test_count_equals_real_model(family, sizes):
    model = make_tiny_model(family, dtype=torch.float32)
    plan = random_plan(model, keep_layers=list(range(sizes.get("layers", 4))), **sizes)
    assert isinstance(plan, PrunePlan)
    student = apply_plan(model, plan)
    arch = adapter_for(student.config).architecture(student.config)
    layout = parameter_layout(student.config)
    assert parameter_counts(arch, layout) == parameter_breakdown(student)
    assert count_parameters(arch, layout) == student.num_parameters()
    active = count_active_parameters(arch, layout)
    if arch.is_moe:    # one token touches num_experts_per_tok of the num_experts experts in each layer
        per_expert = sum(p.numel() for p in student.model.layers[0].mlp.experts.parameters()) // arch.num_experts
        idle = arch.num_hidden_layers * (arch.num_experts - arch.num_experts_per_tok)
        assert active == student.num_parameters() - idle * per_expert
        assert (active < student.num_parameters()) == (idle > 0)
    else:
        assert active == student.num_parameters()


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


def test_derived_hidden_sizes_divide_by_the_heads():
    """SmolLM2's shape (hidden 576, 9 heads): a 64-step grid leaves only 576 divisible by 9 (transformers'
    configs require it), so the search could never prune the embedding channels; the step becomes 72."""
    source, layout, model_type = _source_and_layout()
    smol = source.replace(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                          intermediate_size=1536)
    space = SearchSpace.derive(smol)
    assert space.hidden_size == [576, 504, 432, 360, 288]
    width_only = [c for c in enumerate_candidates(space, smol, layout, model_type, int(0.5 * count_parameters(smol, layout)),
                                                  0.05) if c.arch.num_attention_heads == 9]
    assert {c.arch.hidden_size for c in width_only} > {576}
    # a cap on the candidates takes each hidden size's nearest in turn, not the nearest overall
    everything = enumerate_candidates(space, smol, layout, model_type, int(0.667 * count_parameters(smol, layout)), 0.05)
    capped = enumerate_candidates(space, smol, layout, model_type, int(0.667 * count_parameters(smol, layout)), 0.05,
                                  max_candidates=6)
    sizes = {c.arch.hidden_size for c in everything}
    assert len(sizes) >= 2 and {c.arch.hidden_size for c in capped} == sizes and len(capped) == 6
    for size in sizes:   # within a hidden size, the nearest ones
        mine = [c.name for c in capped if c.arch.hidden_size == size]
        assert mine == [c.name for c in everything if c.arch.hidden_size == size][:len(mine)]
    assert [c.name for c in capped] == [c.name for c in everything if c.name in {d.name for d in capped}]
    # power-of-two head counts keep the hardware step
    assert SearchSpace.derive(smol.replace(num_attention_heads=8, num_key_value_heads=8)).hidden_size[:2] == [576, 512]


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
