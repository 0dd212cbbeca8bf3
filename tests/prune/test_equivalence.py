"""Pruning is exact: the pruned model equals the original with the removed units masked out."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import FAMILIES, MOE_FAMILIES, make_tiny_model, random_plan
from torch import nn

from compactlm.arch import adapter_for
from compactlm.importance.hooks import SkipLayer
from compactlm.prune import PrunePlan, apply_plan

TOL = dict(atol=1e-10, rtol=1e-10)
# transformers' RMSNorm upcasts to float32 internally, and Mixtral's router keeps float32 weights,
# so once norms or routers see other inputs the float64 models agree only to float32 precision.
TOL_FLOAT32 = dict(atol=1e-6, rtol=1e-6)


class KeptChannelsNorm(nn.Module):
    """The original norm computed over the kept channels only; removed channels come out as zeros.

    This is what a norm of the pruned model computes (its statistics — RMS, or LayerNorm's mean
    and variance — run over the kept channels), written on the unpruned width.
    """

    def __init__(self, norm: nn.Module, kept: list[int]):
        super().__init__()
        self.kept = torch.tensor(kept)
        self.norm = copy.deepcopy(norm)
        for name, p in list(self.norm.named_parameters(recurse=False)):
            setattr(self.norm, name, nn.Parameter(p.detach()[self.kept].clone(), requires_grad=False))
        if isinstance(self.norm, nn.LayerNorm):
            self.norm.normalized_shape = (len(kept),)

    def forward(self, x):
        out = torch.zeros_like(x)
        out[..., self.kept] = self.norm(x[..., self.kept])
        return out


class MaskedRouter(nn.Module):
    """The family's router with the logits of removed experts at -inf (softmax, top-k, optional renorm)."""

    def __init__(self, gate: nn.Module, removed: list[int], renormalize: bool):
        super().__init__()
        self.gate, self.removed, self.renormalize = gate, removed, renormalize

    def forward(self, hidden_states):
        logits = F.linear(hidden_states.reshape(-1, self.gate.hidden_dim), self.gate.weight)
        masked = logits.clone()
        masked[:, self.removed] = -math.inf
        probs = torch.softmax(masked.double(), dim=-1)
        top, index = torch.topk(probs, self.gate.top_k, dim=-1)
        if self.renormalize:
            top = top / top.sum(dim=-1, keepdim=True)
        return logits, top.to(logits.dtype), index


def _set_rows(t: torch.Tensor, dim: int, index: list[int]) -> None:
    if index:
        t.index_fill_(dim, torch.tensor(index), 0)


@torch.no_grad()
def masked_reference(model, plan: PrunePlan):
    """The original model with every unit the plan removes masked out, computed in place on a copy."""
    ref = copy.deepcopy(model)
    a = adapter_for(ref.config)
    src = plan.source
    d = src.head_dim
    layers = a.decoder_layers(ref)
    all_heads = range(src.num_attention_heads)
    drop_hidden = [] if plan.hidden is None else sorted(set(range(src.hidden_size)) - set(plan.hidden))
    for i, layer in enumerate(layers):
        if i not in plan.layers:
            layers[i] = SkipLayer()                       # removed layer skipped
            continue
        o_proj = layer.get_submodule(a.o_proj)
        for h in set(all_heads) - set(plan.heads[i]):     # zeroed head output
            o_proj.weight[:, h * d:(h + 1) * d] = 0
        if a.q_projection_norm:                           # q/k norms see only the kept heads' channels
            q_rows = [h * d + t for h in plan.heads[i] for t in range(d)]
            kv_rows = [g * d + t for g in plan.kv_groups[i] for t in range(d)]
            for name, rows in ((a.q_projection_norm, q_rows), (a.k_projection_norm, kv_rows)):
                layer.get_submodule(name.rpartition(".")[0]).register_module(
                    name.rpartition(".")[2], KeptChannelsNorm(layer.get_submodule(name), rows))
        writers = [o_proj]                                # modules that write the residual stream (rows = hidden)
        if src.intermediate_size:
            down = layer.get_submodule(a.down_proj)
            _set_rows(down.weight, 1, sorted(set(range(src.intermediate_size)) - set(plan.neurons[i])))
            writers.append(down)
        if src.is_moe:
            experts, mlp = layer.get_submodule(a.experts), layer.get_submodule(a.router.rpartition(".")[0])
            for e, kept in zip(plan.experts[i], plan.expert_neurons[i]):
                _set_rows(experts.down_proj[e], 1, sorted(set(range(src.moe_intermediate_size)) - set(kept)))
            _set_rows(experts.down_proj, 1, drop_hidden)
            removed = sorted(set(range(src.num_experts)) - set(plan.experts[i]))
            if removed:
                gate = layer.get_submodule(a.router)
                mlp.gate = MaskedRouter(gate, removed, getattr(gate, "norm_topk_prob", True))
            if a.shared_expert:
                down = layer.get_submodule(f"{a.shared_expert}.down_proj")
                kept = plan.shared_neurons[i]
                _set_rows(down.weight, 1, sorted(set(range(src.shared_expert_intermediate_size)) - set(kept)))
                writers.append(down)
        for lin in writers:                               # removed channels stay exactly zero in the residual
            _set_rows(lin.weight, 0, drop_hidden)
            if lin.bias is not None:
                _set_rows(lin.bias, 0, drop_hidden)
        if drop_hidden:
            for name in a.norms:
                parent, _, child = name.rpartition(".")
                (layer.get_submodule(parent) if parent else layer).register_module(
                    child, KeptChannelsNorm(layer.get_submodule(name), plan.hidden))
    if drop_hidden:
        _set_rows(ref.get_input_embeddings().weight, 1, drop_hidden)
        parent, _, child = a.final_norm.rpartition(".")
        ref.get_submodule(parent).register_module(child, KeptChannelsNorm(ref.get_submodule(a.final_norm), plan.hidden))
    return ref


EAGER_EXPERTS = dict(experts_implementation="eager")   # float64: the default grouped_mm kernel has none


def ids(batch=2, seq=12, seed=1):
    return torch.randint(3, 128, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_keep_everything_is_bit_identical(family):
    model = make_tiny_model(family)
    student = apply_plan(model, random_plan(model))
    x = ids()
    assert torch.equal(student(x).logits, model(x).logits)


SHARED_AXES = {
    "heads": dict(heads=2),
    "kv_groups": dict(groups=1, heads=2),
    "hidden": dict(hidden=40),
    "depth": dict(layers=2),
}
DENSE_AXES = {"mlp": dict(neurons=40), "all": dict(hidden=40, neurons=40, heads=2, groups=1, layers=3)}
MOE_AXES = {"experts": dict(experts=3), "expert_mlp": dict(moe_neurons=16),
            "all": dict(hidden=40, experts=3, moe_neurons=16, heads=2, groups=1, layers=3)}
SHARED_EXPERT_AXES = {"shared_expert": dict(shared=24),
                      "all": dict(hidden=40, experts=3, moe_neurons=16, shared=24, heads=2, groups=1, layers=3)}


# OLMoE needs hidden = heads x head_dim (its q_norm is sized by hidden_size): heads and hidden go together.
OLMOE_AXES = {"heads_hidden": dict(heads=2, hidden=32), "kv_groups_hidden": dict(groups=1, heads=2, hidden=32),
              "all": dict(hidden=32, experts=3, moe_neurons=16, heads=2, groups=1, layers=3)}


def axes_of(family: str) -> dict[str, dict]:
    """The pruning axes a family has, each alone (or coupled, where the family couples them), and all together."""
    if family not in MOE_FAMILIES:
        return SHARED_AXES | DENSE_AXES
    if family == "olmoe":
        return {"depth": SHARED_AXES["depth"]} | MOE_AXES | OLMOE_AXES
    with_shared = "shared_expert_intermediate_size" in MOE_FAMILIES[family]
    return SHARED_AXES | MOE_AXES | (SHARED_EXPERT_AXES if with_shared else {})


CASES = [(family, axis) for family in sorted(FAMILIES) for axis in sorted(axes_of(family))]


@pytest.mark.parametrize(("family", "axis"), CASES, ids=[f"{f}-{a}" for f, a in CASES])
def test_pruned_equals_masked(family, axis):
    model = make_tiny_model(family)
    plan = random_plan(model, seed=3, **axes_of(family)[axis])
    student = apply_plan(model, plan)
    x = ids()
    exact = plan.hidden is None and not (plan.source.is_moe and plan.target.num_experts < plan.source.num_experts)
    torch.testing.assert_close(student(x).logits, masked_reference(model, plan)(x).logits,
                               **(TOL if exact else TOL_FLOAT32))
    assert adapter_for(student.config).architecture(student.config) == plan.target


def test_reload_and_generate_after_depth_pruning(family, tmp_path):
    from transformers import AutoModelForCausalLM

    from compactlm.export import save_student

    model = make_tiny_model(family)
    plan = random_plan(model, seed=5, hidden=32, heads=2, layers=2)
    student = apply_plan(model, plan)
    save_student(student, None, tmp_path / "student", plan=plan)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student", dtype=torch.float64, attn_implementation="eager",
                                                    **EAGER_EXPERTS).eval()
    x = ids()
    assert torch.equal(reloaded(x).logits, student(x).logits)
    assert [layer.self_attn.layer_idx for layer in reloaded.model.layers] == list(range(2))
    assert PrunePlan.load(tmp_path / "student").to_dict() == plan.to_dict()
    prompt = x[:1, :5]
    cached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    uncached = reloaded.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached) and cached.shape[1] == 11


def test_tied_embeddings_stay_tied():
    model = make_tiny_model("llama")
    student = apply_plan(model, random_plan(model, hidden=40))
    assert student.config.tie_word_embeddings
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()


def test_per_layer_config_lists_follow_kept_layers():
    model = make_tiny_model("qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=2)
    assert model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    plan = random_plan(model, layers=3, keep_layers=[0, 2, 3])
    student = apply_plan(model, plan)
    assert student.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert student.config.max_window_layers == 1
