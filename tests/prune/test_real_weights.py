"""Pruning is exact on the real weights of the built-in teachers, not only on random tiny models.

Each teacher is cut to its first layers (Gemma 3: six, the sixth a global-attention layer) and its first
32,768 tokens of vocabulary (the rows pruning never changes; the whole 262K-row embedding in float64 is
1.3 GB per copy) and run in float64; each axis, alone and all together, must equal the original with the removed units masked
out, as in test_equivalence.py. Real weights bring what random ones hide: Gemma's residual stream
reaches thousands, its 262K-token embedding is scaled by sqrt(hidden), its sliding-window layers
only differ from global ones past 512 tokens; Qwen2.5's q/k/v biases are large and its output head
is untied.
"""

from __future__ import annotations

import pytest
import torch
from helpers import builtin_missing, random_plan
from test_equivalence import TOL_FLOAT32, masked_reference
from transformers import AutoModelForCausalLM

from compactlm import load_model
from compactlm.arch import adapter_for
from compactlm.prune import PrunePlan, apply_plan

KEEP = {"gemma3-270m": 6, "qwen2.5-coder-0.5b": 4}   # first layers kept: Gemma's layer 5 is global attention
AXES = {
    "gemma3-270m": {"heads": dict(heads=2), "hidden": dict(hidden=384), "mlp": dict(neurons=1024),
                    "depth": dict(keep_layers=[0, 1, 4, 5], layers=4),
                    "all": dict(hidden=448, neurons=1280, heads=2, keep_layers=[0, 2, 3, 5], layers=4)},
    "qwen2.5-coder-0.5b": {"heads": dict(heads=8), "kv_groups": dict(groups=1, heads=7), "hidden": dict(hidden=616),
                           "mlp": dict(neurons=2048), "depth": dict(keep_layers=[0, 3], layers=2),
                           "all": dict(hidden=672, neurons=3072, heads=6, keep_layers=[0, 1, 3], layers=3)},
}
CASES = [(name, axis) for name in AXES for axis in AXES[name]]
SEQ = {"gemma3-270m": 520, "qwen2.5-coder-0.5b": 24}   # past Gemma's 512-token sliding window
VOCAB = 32768
LAST = 8                                               # logits compared at the last positions only (262K vocabulary)


def _skip_unless_installed(name: str) -> None:
    if (why := builtin_missing(name)) is not None:
        pytest.skip(why)


def first_layers(model, n: int):
    """``model`` cut to its first ``n`` decoder layers and ``VOCAB`` tokens, config included (in place)."""
    model.resize_token_embeddings(VOCAB)
    if (model.config.pad_token_id or 0) >= VOCAB:   # Qwen's <|endoftext|> lies past the cut
        model.config.pad_token_id = None
    del model.model.layers[n:]
    model.config.num_hidden_layers = n
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:n]
    return model


@pytest.fixture(scope="module")
def real():
    """name -> the teacher's first layers in float64, loaded once per module."""
    cache = {}

    def get(name: str):
        _skip_unless_installed(name)
        if name not in cache:
            loaded = first_layers(load_model(name, dtype="float32", with_tokenizer=False), KEEP[name])
            # Built in float64 rather than cast: buffers made at construction (Gemma's embedding scale
            # sqrt(640)) then hold the float64 value, as in a model loaded in float64 and in its students.
            model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float64)
            model.load_state_dict({k: v.double() for k, v in loaded.state_dict().items()})
            cache[name] = model.eval()
        return cache[name]
    return get


def _ids(name: str, model) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(10, model.config.vocab_size, (1, SEQ[name]), generator=g)


@torch.no_grad()
def _logits(model, ids):
    return model(ids, logits_to_keep=LAST).logits


@pytest.mark.parametrize("name", list(AXES))
def test_keep_everything_is_bit_identical_on_real_weights(real, name):
    model = real(name)
    student = apply_plan(model, random_plan(model))
    ids = _ids(name, model)
    assert torch.equal(_logits(student, ids), _logits(model, ids))


@pytest.mark.parametrize(("name", "axis"), CASES, ids=[f"{n}-{a}" for n, a in CASES])
def test_pruned_equals_masked_on_real_weights(real, name, axis):
    model = real(name)
    plan = random_plan(model, seed=3, **AXES[name][axis])
    student = apply_plan(model, plan)
    ids = _ids(name, model)
    expected = _logits(masked_reference(model, plan), ids)
    # The families' RMSNorm runs in float32 whatever the dtype: the hidden axis changes what norms see, so it is
    # exact to float32 precision, relative to the size of the logits (Gemma's run to ~100).
    scale = expected.abs().max().item()
    tol = dict(rtol=0, atol=1e-10 * scale) if plan.hidden is None else dict(rtol=0, atol=TOL_FLOAT32["atol"] * scale)
    torch.testing.assert_close(_logits(student, ids), expected, **tol)
    assert adapter_for(student.config).architecture(student.config) == plan.target
    if getattr(model.config, "layer_types", None):
        assert student.config.layer_types == [model.config.layer_types[i] for i in plan.layers]


def test_qwen_heads_are_pruned_within_their_kv_groups(real):
    model = real("qwen2.5-coder-0.5b")
    plan = random_plan(model, seed=1, heads=8)                  # 14 heads in 2 groups of 7 -> 2 groups of 4
    per_group = model.config.num_attention_heads // model.config.num_key_value_heads
    for layer, heads in plan.heads.items():
        assert [sum(h // per_group == g for h in heads) for g in plan.kv_groups[layer]] == [4, 4]
    student = apply_plan(model, plan)
    attention = student.model.layers[0].self_attn
    assert attention.q_proj.bias.shape == (8 * 64,) and attention.k_proj.bias.shape == (2 * 64,)
    assert student.lm_head.weight.data_ptr() != student.model.embed_tokens.weight.data_ptr()


def test_gemma_depth_pruned_student_reloads_and_generates_with_the_kv_cache(real, tmp_path):
    """A stale ``layer_types`` after depth pruning breaks reload or silently turns a global layer into a
    sliding one: the reloaded student keeps the kept layers' kinds, equals the student, and its greedy
    continuation with the KV cache equals the one without, across the 512-token sliding window."""
    from compactlm.export import save_student

    model = real("gemma3-270m")
    plan = random_plan(model, seed=5, keep_layers=[0, 3, 5], layers=3, hidden=448)
    student = apply_plan(model, plan)
    save_student(student, None, tmp_path / "student", plan=plan)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student", dtype=torch.float64).eval()
    assert reloaded.config.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]
    assert PrunePlan.load(tmp_path / "student").to_dict() == plan.to_dict()
    ids = _ids("gemma3-270m", model)
    assert torch.equal(_logits(reloaded, ids), _logits(student, ids))
    prompt = ids[:, :508]
    cached = reloaded.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
    uncached = reloaded.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached) and cached.shape[1] == 516
