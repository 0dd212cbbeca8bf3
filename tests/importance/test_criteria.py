"""Width criteria: magnitude and Taylor equal their formulas unit by unit; random is seeded; all prune alike."""

from __future__ import annotations

import pytest
import torch
from helpers import make_tiny_model

from compactlm.arch import adapter_for
from compactlm.config import ImportanceSection
from compactlm.errors import CompactLMError
from compactlm.importance import CRITERIA, CriterionOptions, ImportanceScores, check_criterion, estimate_importance
from compactlm.importance.criteria import magnitude_scores, random_scores, taylor_scores
from compactlm.prune import PruneTarget, make_plan, select_units


def unit_weights(model, grads: bool = False) -> tuple[list, list, list]:
    """Every unit's own weights (or their gradients) as flat vectors, gathered one unit at a time."""
    a = adapter_for(model.config)
    arch = a.architecture(model.config)
    d = arch.head_dim
    get = (lambda m: m.weight.grad) if grads else (lambda m: m.weight.detach())
    neurons, heads = [], []
    channels = [[] for _ in range(arch.hidden_size)]
    for layer in a.decoder_layers(model):
        w = {n: get(a.layer_module(layer, n)) for n in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, a.gate_proj,
                                                       a.up_proj, a.down_proj)}
        neurons.append([torch.cat([w[a.gate_proj][j], w[a.up_proj][j], w[a.down_proj][:, j]])
                        for j in range(arch.intermediate_size)])
        heads.append([torch.cat([w[a.q_proj][h * d:(h + 1) * d].flatten(), w[a.o_proj][:, h * d:(h + 1) * d].flatten()])
                      for h in range(arch.num_attention_heads)])
        for c in range(arch.hidden_size):
            channels[c] += [w[n][:, c] for n in (a.q_proj, a.k_proj, a.v_proj, a.gate_proj, a.up_proj)]
            channels[c] += [w[a.o_proj][c], w[a.down_proj][c]]
    tables = [get(model.get_submodule(a.embed_tokens))]
    if not arch.tie_word_embeddings:
        tables.append(get(model.get_submodule(a.lm_head)))
    for c in range(arch.hidden_size):
        channels[c] += [t[:, c] for t in tables]
    return neurons, heads, [torch.cat(c) for c in channels]


def test_unknown_criterion_suggests_the_closest():
    with pytest.raises(CompactLMError, match=r"Unknown criterion 'magnitud'. Did you mean 'magnitude'\? "
                                             r"Available: activation, magnitude, random, taylor."):
        check_criterion("magnitud")


@pytest.mark.parametrize("family", ["llama", "llama_bias_untied"])
def test_magnitude_is_the_l2_norm_of_each_units_weights(family):
    model = make_tiny_model(family)
    got = magnitude_scores(model)
    neurons, heads, channels = unit_weights(model)
    torch.testing.assert_close(got.neurons, torch.tensor([[v.norm() for v in row] for row in neurons], dtype=torch.float64))
    torch.testing.assert_close(got.heads, torch.tensor([[v.norm() for v in row] for row in heads], dtype=torch.float64))
    torch.testing.assert_close(got.channels, torch.stack([v.norm() for v in channels]))


def test_taylor_is_weight_times_gradient_of_the_mean_loss():
    model = make_tiny_model("llama_bias_untied").requires_grad_(False)
    x = torch.randint(3, 128, (4, 12), generator=torch.Generator().manual_seed(1))
    got = taylor_scores(model, x, CriterionOptions(batch_size=3, show_progress=False))      # batches of 3 and 1
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())          # left as found

    model.requires_grad_(True)
    model(input_ids=x, labels=x).loss.backward()            # one batch: HF's mean over all 4 x 11 targets
    w, g = unit_weights(model), unit_weights(model, grads=True)
    expected = [[(a * b).abs().sum() for a, b in zip(ra, rb)] for ra, rb in zip(w[0], g[0])]
    torch.testing.assert_close(got.neurons, torch.tensor(expected, dtype=torch.float64))
    expected = [[(a * b).abs().sum() for a, b in zip(ra, rb)] for ra, rb in zip(w[1], g[1])]
    torch.testing.assert_close(got.heads, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(got.channels, torch.stack([(a * b).abs().sum() for a, b in zip(w[2], g[2])]))


def test_taylor_ignores_padding():
    model = make_tiny_model("llama")
    x = torch.randint(3, 128, (2, 10), generator=torch.Generator().manual_seed(2))
    padded = torch.cat([x, torch.zeros(2, 5, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(2, 10), torch.zeros(2, 5)], 1).long()
    plain = taylor_scores(model, x, CriterionOptions(show_progress=False))
    masked = taylor_scores(model, [{"input_ids": padded, "attention_mask": mask}], CriterionOptions(show_progress=False))
    for a, b in zip(plain, masked):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_random_is_seeded():
    model = make_tiny_model("llama")
    a, b, c = (random_scores(model, options=CriterionOptions(seed=s)) for s in (0, 0, 1))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a.neurons, c.neurons)
    assert [tuple(t.shape) for t in a] == [(4, 96), (4, 4), (64,)]


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_every_criterion_gives_scores_that_prune(criterion, tmp_path):
    model = make_tiny_model("qwen2")
    x = torch.randint(3, 128, (4, 12), generator=torch.Generator().manual_seed(3))
    scores = estimate_importance(model, x, ImportanceSection(criterion=criterion, seed=5, batch_size=2, layer_loss_samples=2),
                                 show_progress=False)
    scores.save(tmp_path / "s")
    loaded = ImportanceScores.load(tmp_path / "s")
    assert loaded.criterion == criterion == loaded.meta["criterion"]
    activation = estimate_importance(model, x, ImportanceSection(batch_size=2, layer_loss_samples=2), show_progress=False)
    for name in ("layers.cos_next", "layers.block_cos", "layers.loss"):          # layer metrics do not depend on it
        torch.testing.assert_close(loaded.tensors[name], activation.tensors[name], rtol=1e-12, atol=1e-12)

    target = PruneTarget(hidden_size=48, intermediate_size=64, num_attention_heads=2, num_hidden_layers=3)
    plan = make_plan(loaded, target, depth_metric="loss")
    assert plan.criteria["criterion"] == criterion
    if criterion == "activation":
        return
    direct = CRITERIA[criterion](model, x, CriterionOptions(batch_size=2, seed=5, show_progress=False))
    src = adapter_for(model.config).architecture(model.config)
    expected = select_units(src, target.resolve(src), layers=plan.layers, neurons=direct.neurons, heads=direct.heads,
                            channels=direct.channels)
    assert (plan.neurons, plan.heads, plan.hidden) == (expected.neurons, expected.heads, expected.hidden)
