"""Importance statistics equal brute-force computations; padding changes nothing."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from helpers import MOE_FAMILIES, make_tiny_model

from compactlm.arch import adapter_for
from compactlm.config import ImportanceSection
from compactlm.importance import AGGREGATIONS, ImportanceScores, calibration_blocks, estimate_importance, lm_loss
from compactlm.importance.aggregation import ChannelStatistics, finalize
from compactlm.prune import PrunePlan, apply_plan, select_units


def brute_force(x: torch.Tensor, mask: torch.Tensor, batch: str, seq: str) -> torch.Tensor:
    """Aggregate (B, S, C) activations row by row with plain formulas; (C,)."""
    rows = []
    for b in range(x.shape[0]):
        real = x[b][mask[b].bool()].double()                   # (n, C)
        if len(real) == 0:
            continue
        rows.append({"mean": real.abs().mean(0), "l2": real.norm(dim=0), "var": real.var(0, unbiased=False)}[seq])
    if not rows:              # a site that saw no token (an expert the router never picked) scores 0
        return torch.zeros(x.shape[-1], dtype=torch.float64)
    r = torch.stack(rows)
    return {"mean": r.mean(0), "l2": r.norm(dim=0), "var": r.var(0, unbiased=False)}[batch]


@pytest.mark.parametrize("batch,seq", list(itertools.product(AGGREGATIONS, AGGREGATIONS)))
def test_aggregations_equal_brute_force(batch, seq):
    g = torch.Generator().manual_seed(0)
    stats = ChannelStatistics(1, 7)
    chunks = []
    for _ in range(3):                                        # streaming across batches
        x = torch.randn(4, 9, 7, generator=g) * 3 + 1
        mask = (torch.rand(4, 9, generator=g) > 0.3).long()
        mask[0] = 0                                           # a fully padded row is ignored
        stats.update(0, x, mask)
        chunks.append((x, mask))
    expected = brute_force(torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks]), batch, seq)
    got = finalize(stats.sum, stats.sumsq, stats.rows, batch, seq)[0]
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def hooked_activations(model, x):
    """Store the activations the importance pass looks at, by brute force."""
    a = adapter_for(model.config)
    store = {"down_in": [], "o_in": [], "norm_out": []}
    handles = []
    for layer in a.decoder_layers(model):
        if a.down_proj:       # dense MLP (MoE experts: test_expert_scores_equal_brute_force)
            down = layer.get_submodule(a.down_proj)
            handles.append(down.register_forward_pre_hook(lambda m, args: store["down_in"].append(args[0])))
        handles.append(layer.get_submodule(a.o_proj).register_forward_pre_hook(lambda m, args: store["o_in"].append(args[0])))
        for norm in a.hidden_norms(layer):
            handles.append(norm.register_forward_hook(lambda m, args, out: store["norm_out"].append(out)))
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    for h in handles:
        h.remove()
    return store, out.hidden_states


def test_scores_equal_brute_force_on_a_model(family):
    model = make_tiny_model(family)
    x = torch.randint(3, 128, (3, 10), generator=torch.Generator().manual_seed(1))
    scores = estimate_importance(model, x, ImportanceSection(batch_size=3, layer_loss_samples=0, seq_aggregations="mean,l2,var"),
                                 show_progress=False)
    store, hidden = hooked_activations(model, x)
    mask = torch.ones(3, 10)
    for batch, seq in [("l2", "mean"), ("mean", "var"), ("var", "l2")]:
        if store["down_in"]:
            neurons = torch.stack([brute_force(t, mask, batch, seq) for t in store["down_in"]])
            torch.testing.assert_close(scores.neurons((batch, seq)).double(), neurons, rtol=1e-4, atol=1e-7)
        else:
            assert scores.neurons((batch, seq)).shape == (4, 0)
        heads = torch.stack([brute_force(t, mask, batch, seq).view(4, 16).norm(dim=1) for t in store["o_in"]])
        torch.testing.assert_close(scores.heads((batch, seq)).double(), heads, rtol=1e-4, atol=1e-7)
        channels = sum(brute_force(t, mask, batch, seq) for t in store["norm_out"])
        torch.testing.assert_close(scores.channels((batch, seq)).double(), channels, rtol=1e-4, atol=1e-7)
    # Block Importance from the residual stream (hidden_states[i] is the input of layer i;
    # the last entry is after the final norm, so blocks reaching the end are checked separately).
    # Length 1 streams over every token; longer blocks use every 8th token.
    L = model.config.num_hidden_layers
    for length in (1, 2, 3):
        bi = scores.block_importance(length)
        step = 1 if length == 1 else 8
        for start in range(L - length):
            a, b = hidden[start][:, ::step].double(), hidden[start + length][:, ::step].double()
            cos = F.cosine_similarity(a, b, dim=-1).mean()
            assert float(bi[start]) == pytest.approx(1 - float(cos), abs=1e-6)


@pytest.mark.parametrize("family", sorted(MOE_FAMILIES))
def test_expert_scores_equal_brute_force(family):
    """Expert contribution, routed-token counts and expert/shared neurons, token by token, with padding."""
    model = make_tiny_model(family)
    a = adapter_for(model.config)
    arch = a.architecture(model.config)
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(3, 128, (3, 10), generator=g)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    scores = estimate_importance(model, [{"input_ids": ids, "attention_mask": mask}], ImportanceSection(layer_loss_samples=0,
                                 seq_aggregations="mean,l2,var"), show_progress=False)
    routed, shared_in, handles = [], [], []
    for layer in a.decoder_layers(model):
        experts = layer.get_submodule(a.experts)
        handles.append(experts.register_forward_hook(lambda m, args, out: routed.append((m, *args))))
        if a.shared_expert:
            down = layer.get_submodule(f"{a.shared_expert}.down_proj")
            handles.append(down.register_forward_pre_hook(lambda m, args: shared_in.append(args[0])))
    with torch.no_grad():
        model.model(input_ids=ids, attention_mask=mask)
    for h in handles:
        h.remove()
    real = mask.reshape(-1).bool()
    L, X, width = arch.num_hidden_layers, arch.num_experts, arch.moe_intermediate_size
    contribution, tokens = torch.zeros(L, X, dtype=torch.float64), torch.zeros(L, X, dtype=torch.float64)
    acts = torch.zeros(L, X, 30, width, dtype=torch.float64)
    on = torch.zeros(L, X, 30)
    with torch.no_grad():
        for layer, (experts, hidden, index, weights) in enumerate(routed):
            for t in range(30):
                for slot in range(index.shape[1]):
                    e = int(index[t, slot])
                    if not real[t]:
                        continue
                    gate, up = (experts.gate_up_proj[e] @ hidden[t]).chunk(2)
                    act = experts.act_fn(gate) * up
                    contribution[layer, e] += float(weights[t, slot]) * float((experts.down_proj[e] @ act).norm())
                    tokens[layer, e] += 1
                    acts[layer, e, t], on[layer, e, t] = act, 1
    torch.testing.assert_close(scores.expert_tokens(), tokens)
    torch.testing.assert_close(scores.experts().double(), contribution / float(mask.sum()), rtol=1e-5, atol=1e-8)
    for batch, seq in [("l2", "mean"), ("mean", "var"), ("var", "l2")]:
        expected = torch.stack([torch.stack([brute_force(acts[i, e].view(3, 10, -1), on[i, e].view(3, 10), batch, seq)
                                             for e in range(X)]) for i in range(L)])
        torch.testing.assert_close(scores.expert_neurons((batch, seq)).double(), expected, rtol=1e-4, atol=1e-7)
        if shared_in:
            expected = torch.stack([brute_force(t.view(3, 10, -1), mask, batch, seq) for t in shared_in])
            torch.testing.assert_close(scores.shared_neurons((batch, seq)).double(), expected, rtol=1e-4, atol=1e-7)


def test_default_records_seq_mean_only():
    from compactlm.errors import CompactLMError

    model = make_tiny_model("llama")
    x = torch.randint(3, 128, (2, 8))
    default = estimate_importance(model, x, ImportanceSection(layer_loss_samples=0), show_progress=False)
    full = estimate_importance(model, x, ImportanceSection(layer_loss_samples=0, seq_aggregations="mean,l2,var"),
                               show_progress=False)
    for batch in AGGREGATIONS:
        torch.testing.assert_close(default.neurons((batch, "mean")), full.neurons((batch, "mean")))
    with pytest.raises(CompactLMError, match="--seq-aggregations mean,var"):
        default.heads(("l2", "var"))


def test_more_samples_than_blocks_says_how_many_were_used(caplog):
    """importance.samples beyond the text scores every block there is, and one warning says how many of how many."""
    blocks = torch.randint(3, 128, (4, 8))
    with caplog.at_level("WARNING", logger="compactlm.importance.estimate"):
        assert calibration_blocks(blocks, 10**18).shape[0] == 4
        assert calibration_blocks(blocks, 3).shape[0] == 3 and calibration_blocks(blocks, 4).shape[0] == 4
    [record] = caplog.records
    assert "4 blocks" in record.getMessage() and "of the 1000000000000000000 asked for" in record.getMessage()


def test_padding_changes_nothing():
    model = make_tiny_model("llama")
    g = torch.Generator().manual_seed(2)
    lengths = [10, 6, 3]
    seqs = [torch.randint(3, 128, (n,), generator=g) for n in lengths]
    unpadded = [s.unsqueeze(0) for s in seqs]                 # each sequence alone, no padding
    ids = torch.zeros(3, 10, dtype=torch.long)
    mask = torch.zeros(3, 10, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        ids[i, len(s):] = 99                                  # garbage in the padding must not count
        mask[i, : len(s)] = 1
    options = ImportanceSection(layer_loss_samples=0, seq_aggregations="mean,l2,var")
    padded = estimate_importance(model, [{"input_ids": ids, "attention_mask": mask}], options, show_progress=False)
    alone = estimate_importance(model, unpadded, options, show_progress=False)
    for key, value in alone.tensors.items():
        torch.testing.assert_close(padded.tensors[key], value, rtol=1e-6, atol=1e-6, msg=key)


def test_layer_loss_equals_loss_of_depth_pruned_model():
    model = make_tiny_model("qwen2")
    x = torch.randint(3, 128, (4, 12), generator=torch.Generator().manual_seed(3))
    scores = estimate_importance(model, x, ImportanceSection(batch_size=2, layer_loss_samples=4), show_progress=False)
    a = adapter_for(model.config)
    src = a.architecture(model.config)
    assert scores.base_loss == pytest.approx(lm_loss(model, x), rel=1e-9)
    for i in range(src.num_hidden_layers):
        keep = [j for j in range(src.num_hidden_layers) if j != i]
        L = src.num_hidden_layers
        plan = select_units(src, src.replace(num_hidden_layers=L - 1), layers=keep,
                            neurons=torch.ones(L, src.intermediate_size), heads=torch.ones(L, src.num_attention_heads),
                            channels=torch.ones(src.hidden_size))
        assert float(scores.layer_loss()[i]) == pytest.approx(lm_loss(apply_plan(model, plan), x), rel=1e-9)


def test_scores_roundtrip_and_fingerprint(tmp_path):
    from compactlm.errors import CompactLMError

    model = make_tiny_model("llama")
    x = torch.randint(3, 128, (2, 8))
    scores = estimate_importance(model, x, ImportanceSection(layer_loss_samples=2), show_progress=False)
    scores.save(tmp_path / "s")
    loaded = ImportanceScores.load(tmp_path / "s")
    assert loaded.meta["fingerprint"] == scores.meta["fingerprint"]
    for k, v in scores.tensors.items():
        assert torch.equal(loaded.tensors[k], v)
    loaded.check_matches(model)
    loaded.check_matches(model.to(torch.bfloat16))            # same weights in another dtype
    with pytest.raises(CompactLMError, match="fingerprint"):
        loaded.check_matches(make_tiny_model("llama", seed=7))
    with pytest.raises(CompactLMError, match="not empty"):
        scores.save(tmp_path / "s")
    _ = PrunePlan  # plan I/O is covered in tests/prune
