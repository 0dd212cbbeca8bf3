"""What each family needs beyond the Llama layout: logit transforms, refusals, and clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import make_tiny_model, random_plan

from compactlm.arch import ADAPTERS, LogitTransform, adapter_for
from compactlm.config import ImportanceSection
from compactlm.distill.losses import ChunkedLogitLoss
from compactlm.errors import CompactLMError
from compactlm.evaluate.loglikelihood import head_and_body
from compactlm.importance import estimate_importance
from compactlm.prune import apply_plan
from compactlm.search import SearchArgs, candidates_of, parameter_layout


@pytest.mark.parametrize("family", ["granite", "gemma2"])
def test_chunked_losses_and_evaluation_see_the_logits_forward_returns(family):
    """Granite divides the head's output by logits_scaling and Gemma 2 soft-caps it: the chunked head must too."""
    model = make_tiny_model(family)
    transform = LogitTransform.of(model.config)
    assert not transform.identity
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids).logits
        body, head = head_and_body(model)
        hidden = body(input_ids=ids).last_hidden_state
        torch.testing.assert_close(head(hidden), logits)
        labels = torch.cat([ids[:, 1:], torch.full((2, 1), -100)], 1)
        expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
        for chunk in (None, 5):
            terms = ChunkedLogitLoss(None, chunk)(hidden.flatten(0, 1), model.lm_head, None, None, labels.flatten(),
                                                  torch.ones(24, dtype=hidden.dtype), 0.0, 1.0, transform)
            torch.testing.assert_close(terms.clm_sum, expected)


def test_gemma_keeps_the_teachers_embedding_scale_after_hidden_pruning():
    """Gemma multiplies embeddings by sqrt(hidden_size); the student's own (smaller) scale is compensated."""
    model = make_tiny_model("gemma2", final_logit_softcapping=None)
    plan = random_plan(model, hidden=48)
    student = apply_plan(model, plan)
    ids = torch.randint(3, 128, (1, 6))
    with torch.no_grad():
        teacher_in = model.model.embed_tokens(ids)[..., plan.hidden]
        student_in = student.model.embed_tokens(ids)
    torch.testing.assert_close(student_in, teacher_in)


def test_router_top_k_bounds_the_experts_kept():
    model = make_tiny_model("mixtral")
    with pytest.raises(CompactLMError, match="num_experts=1 keeps fewer experts than the router's top-k"):
        apply_plan(model, random_plan(model, experts=1))


def test_olmoe_prunes_hidden_and_heads_together():
    model = make_tiny_model("olmoe")
    with pytest.raises(CompactLMError, match="hidden_size = num_attention_heads x head_dim.*--hidden-size 32 "
                                             "--num-attention-heads 2"):
        apply_plan(model, random_plan(model, hidden=40, heads=2))


def test_mixed_dense_and_moe_layers_are_refused():
    model = make_tiny_model("qwen3_moe")
    model.config.mlp_only_layers = [1]
    with pytest.raises(CompactLMError, match="mixes dense and MoE layers.*mlp_only_layers=\\[1\\]"):
        adapter_for(model.config)


def test_only_activation_scores_experts():
    model = make_tiny_model("qwen3_moe")
    with pytest.raises(CompactLMError, match="Criterion 'magnitude'.*mixture of experts.*--criterion activation"):
        estimate_importance(model, torch.randint(3, 128, (2, 8)), ImportanceSection(criterion="magnitude"), show_progress=False)


def test_active_params_budget():
    model = make_tiny_model("qwen2_moe", dtype=torch.float32)
    source = adapter_for(model.config).architecture(model.config)
    layout = parameter_layout(model.config)
    args = SearchArgs(target_params="0.8", active_params="0.7", tolerance=0.05)
    _, candidates, target, active = candidates_of(args, source, layout, "qwen2_moe")
    assert candidates and active is not None
    for c in candidates:
        assert abs(c.params / target - 1) <= 0.05 and abs(c.active_params / active - 1) <= 0.05
        assert c.active_params < c.params
    dense = make_tiny_model("llama", dtype=torch.float32)
    with pytest.raises(CompactLMError, match="active_params.*dense"):
        candidates_of(args, adapter_for(dense.config).architecture(dense.config), parameter_layout(dense.config),
                      "llama")


def test_unsupported_family_lists_the_supported_ones():
    with pytest.raises(CompactLMError, match="Unsupported architecture model_type='gpt2'.*" + ".*".join(
            sorted(ADAPTERS)[:3])):
        adapter_for(type("Config", (), {"model_type": "gpt2"}))


def test_moe_from_the_cli_prints_routing_and_prunes_experts(tiny_checkpoint, text_file, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from compactlm.cli import main

    model = tiny_checkpoint("qwen2_moe")
    assert main(["importance", "--model", str(model), "--data", str(text_file), "--samples", "4", "--seq-len", "16",
                 "--layer-loss-samples", "0", "--out", str(tmp_path / "scores")]) == 0
    out = capsys.readouterr().out
    assert "routing (calibration tokens per expert):" in out and out.count("least important experts") == 4
    assert main(["-q", "prune", "--model", str(model), "--scores", str(tmp_path / "scores"), "--num-experts", "3",
                 "--moe-intermediate-size", "24", "--shared-expert-intermediate-size", "32", "--hidden-size", "48",
                 "--out", str(tmp_path / "student")]) == 0
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert (student.config.num_experts, student.config.moe_intermediate_size,
            student.config.shared_expert_intermediate_size, student.config.hidden_size) == (3, 24, 32, 48)
    assert main(["-q", "prune", "--model", str(model), "--scores", str(tmp_path / "scores"), "--num-experts", "1",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "keeps fewer experts than the router's top-k" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    dense = tiny_checkpoint("llama", name="dense")
    assert main(["-q", "prune", "--model", str(dense), "--scores", str(tmp_path / "scores"), "--num-experts", "2",
                 "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_moe_widths_stay_aligned_for_the_expert_kernels():
    model = make_tiny_model("mixtral")
    with pytest.raises(CompactLMError, match="multiples of 8 for a mixture-of-experts student"):
        apply_plan(model, random_plan(model, moe_neurons=20))


@pytest.mark.parametrize("family", ["qwen2_moe", "llama"])
def test_data_parallel_importance_sums_every_statistic(family, monkeypatch):
    """Under torchrun every recorded statistic (expert ones included) is summed over processes."""
    from types import SimpleNamespace

    import torch.distributed as dist

    from compactlm.importance.hooks import ImportanceRecorder

    model = make_tiny_model(family)
    recorder = ImportanceRecorder(model, adapter_for(model.config))
    with recorder.attached(), torch.no_grad():
        model.model(input_ids=torch.randint(3, 128, (2, 8)))
    summed = []
    monkeypatch.setattr(dist, "all_reduce", lambda t, op=None: summed.append(t))
    recorder.all_reduce(SimpleNamespace(distributed=True))
    reduced = {id(t) for t in summed}
    before_cpu = {name: t for name, t in recorder.tensors().items()}
    assert before_cpu
    stats = {"layers.cos_next": recorder.cos_next, "experts.tokens": recorder.expert_tokens}
    assert all(id(t) in reduced for name, t in stats.items() if name in before_cpu)
    width = [s for s in recorder._width_statistics().values()]
    assert all(id(t) in reduced for s in width for t in (s.sum, s.sumsq, s.rows))
    assert len(summed) == 4 + 3 * len(width) + 2
