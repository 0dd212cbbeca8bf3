"""Pruning is exact: the pruned model equals the original with the removed units masked out."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_tiny_model

from compactlm.arch import adapter_for
from compactlm.importance.hooks import SkipLayer
from compactlm.prune import PrunePlan, apply_plan, select_units

TOL = dict(atol=1e-10, rtol=1e-10)
# transformers' RMSNorm upcasts to float32 internally, so once the norms see different
# (rescaled) inputs the float64 models agree only to float32 precision.
TOL_HIDDEN = dict(atol=1e-6, rtol=1e-6)


def random_plan(model, seed=0, hidden=None, neurons=None, heads=None, groups=None, layers=None,
                keep_layers=None) -> PrunePlan:
    """A plan from random scores with the requested sizes (None keeps the axis)."""
    g = torch.Generator().manual_seed(seed)
    a = adapter_for(model.config)
    src = a.architecture(model.config)
    target = src.replace(hidden_size=hidden, intermediate_size=neurons, num_attention_heads=heads,
                         num_key_value_heads=groups, num_hidden_layers=layers)
    if keep_layers is None:
        keep_layers = sorted(torch.randperm(src.num_hidden_layers, generator=g)[: target.num_hidden_layers].tolist())
    L = src.num_hidden_layers
    return select_units(src, target, layers=keep_layers,
                        neurons=torch.rand(L, src.intermediate_size, generator=g),
                        heads=torch.rand(L, src.num_attention_heads, generator=g),
                        channels=torch.rand(src.hidden_size, generator=g))


@torch.no_grad()
def masked_reference(model, plan: PrunePlan):
    """The original model with every unit the plan removes masked out, computed in place on a copy."""
    import copy

    ref = copy.deepcopy(model)
    a = adapter_for(ref.config)
    src = plan.source
    d = src.head_dim
    layers = a.decoder_layers(ref)
    drop_hidden = [] if plan.hidden is None else sorted(set(range(src.hidden_size)) - set(plan.hidden))
    for i, layer in enumerate(layers):
        o_proj, down = layer.get_submodule(a.o_proj), layer.get_submodule(a.down_proj)
        removed_heads = set(range(src.num_attention_heads)) - set(plan.heads.get(i, range(src.num_attention_heads)))
        for h in removed_heads:                       # zeroed head output
            o_proj.weight[:, h * d:(h + 1) * d] = 0
        removed_neurons = set(range(src.intermediate_size)) - set(plan.neurons.get(i, range(src.intermediate_size)))
        down.weight[:, sorted(removed_neurons)] = 0   # zeroed neuron
        for lin in (o_proj, down):                    # removed channels stay exactly zero in the residual
            lin.weight[drop_hidden] = 0
            if lin.bias is not None:
                lin.bias[drop_hidden] = 0
    if drop_hidden:
        ref.get_input_embeddings().weight[:, drop_hidden] = 0
        # RMSNorm divides by the RMS over all H channels; the pruned model divides by the RMS
        # over the e kept ones. With zeros in the removed channels the two differ by sqrt(H/e)
        # and by eps' = eps * e/H; rescale so the reference is the pruned network exactly.
        ratio = len(plan.hidden) / src.hidden_size
        norms = [n for layer in layers for n in a.hidden_norms(layer)] + [ref.get_submodule(a.final_norm)]
        for norm in norms:
            norm.weight.mul_(math.sqrt(ratio))
            norm.variance_epsilon *= ratio
    for i in range(len(layers)):
        if i not in plan.layers:                      # removed layer skipped
            layers[i] = SkipLayer()
    return ref


def ids(batch=2, seq=12, seed=1):
    return torch.randint(3, 128, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_keep_everything_is_bit_identical(family):
    model = make_tiny_model(family)
    student = apply_plan(model, random_plan(model))
    x = ids()
    assert torch.equal(student(x).logits, model(x).logits)


AXES = {
    "mlp": dict(neurons=40),
    "heads": dict(heads=2),
    "kv_groups": dict(groups=1, heads=2),
    "hidden": dict(hidden=40),
    "depth": dict(layers=2),
    "all": dict(hidden=40, neurons=40, heads=2, groups=1, layers=3),
}


@pytest.mark.parametrize("axis", sorted(AXES))
def test_pruned_equals_masked(family, axis):
    model = make_tiny_model(family)
    plan = random_plan(model, seed=3, **AXES[axis])
    student = apply_plan(model, plan)
    x = ids()
    tol = TOL_HIDDEN if plan.hidden is not None else TOL
    torch.testing.assert_close(student(x).logits, masked_reference(model, plan)(x).logits, **tol)
    expected = plan.target
    cfg = student.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.num_hidden_layers, cfg.head_dim) == (expected.hidden_size, expected.intermediate_size,
                                                     expected.num_attention_heads, expected.num_key_value_heads,
                                                     expected.num_hidden_layers, expected.head_dim)


def test_reload_and_generate_after_depth_pruning(family, tmp_path):
    from transformers import AutoModelForCausalLM

    from compactlm.export import save_student

    model = make_tiny_model(family)
    plan = random_plan(model, seed=5, hidden=48, heads=2, layers=2)
    student = apply_plan(model, plan)
    save_student(student, None, tmp_path / "student", plan=plan)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student", dtype=torch.float64, attn_implementation="eager").eval()
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
