"""The task depth metric: accuracy with a layer block removed, as `evaluate` scores the depth-pruned model."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_char_tokenizer, make_tiny_model

from compactlm.arch import adapter_for
from compactlm.config import EvalArgs, ImportanceSection
from compactlm.errors import CompactLMError
from compactlm.evaluate import evaluate, run_task
from compactlm.importance import ImportanceScores, estimate_importance, layers_dropped
from compactlm.prune import PruneTarget, apply_plan, make_plan, select_units

NAMES = ["Ann", "Bob", "Cy", "Dee", "Eve", "Flo", "Gus", "Hal"]


def winogrande_rows(n: int = 10) -> list[dict]:
    return [{"sentence": f"{NAMES[i % 8]} gave the {'red' if i % 3 else 'old'} ball to _ after {i} days.",
             "option1": NAMES[(i + 1) % 8], "option2": NAMES[(i + 3) % 8], "answer": str(1 + i % 2)} for i in range(n)]


@pytest.fixture
def task_dir(tmp_path):
    (tmp_path / "winogrande").mkdir()
    (tmp_path / "winogrande" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in winogrande_rows()))
    return tmp_path


def depth_pruned(model, removed: list[int]):
    a = adapter_for(model.config)
    src = a.architecture(model.config)
    L = src.num_hidden_layers
    keep = [i for i in range(L) if i not in removed]
    plan = select_units(src, src.replace(num_hidden_layers=len(keep)), layers=keep, neurons=torch.ones(L, src.intermediate_size),
                        heads=torch.ones(L, src.num_attention_heads), channels=torch.ones(src.hidden_size))
    return apply_plan(model, plan)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("removed", [[0], [0, 1], [1, 2], [3]])
def test_layers_dropped_scores_like_the_depth_pruned_model(family, removed):
    model, tok = make_tiny_model(family), make_char_tokenizer()
    rows = (winogrande_rows(6), "test")
    expected = run_task("winogrande", depth_pruned(model, removed), tok, rows=rows)    # KV-cache prefix sharing on
    before = (model.config.num_hidden_layers, [layer.self_attn.layer_idx for layer in model.model.layers])
    with layers_dropped(model, removed):
        got = run_task("winogrande", model, tok, rows=rows)
    torch.testing.assert_close(torch.tensor([s["logprobs"] for s in got["samples"]]),
                               torch.tensor([s["logprobs"] for s in expected["samples"]]), rtol=1e-12, atol=1e-12)
    assert (model.config.num_hidden_layers, [layer.self_attn.layer_idx for layer in model.model.layers]) == before


def test_task_metric_equals_evaluate_of_each_depth_pruned_model(task_dir, tmp_path):
    model, tok = make_tiny_model("qwen2"), make_char_tokenizer()
    x = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    scores = estimate_importance(model, x, ImportanceSection(layer_loss_samples=0, depth_tasks=["winogrande"],
                                 depth_task_examples=6), tokenizer=tok, data_dir=task_dir, show_progress=False)
    scores.save(tmp_path / "s")
    scores = ImportanceScores.load(tmp_path / "s")
    acc = scores.tensors["layers.task.winogrande"]                             # (L+1, L+1)
    info = scores.meta["depth_tasks"]["winogrande"]
    assert scores.depth_tasks == ["winogrande"] and info["examples"] == 6 and info["lengths"] == [1, 2, 3]

    def accuracy(m) -> float:
        return evaluate(m, tok, EvalArgs(tasks=["winogrande"], limit=6,
                        data_dir=task_dir))["results"]["winogrande"]["metrics"]["acc"]

    assert torch.equal(acc.diagonal(), torch.full((5,), accuracy(model), dtype=torch.float64))
    for start in range(4):
        for end in range(start + 1, 5):
            if end - start < 4:
                assert float(acc[start, end]) == accuracy(depth_pruned(model, list(range(start, end)))), (start, end)
    assert torch.isnan(acc[0, 4]) and torch.isnan(acc[1, 0])                   # all layers / backwards: never scored
    assert len({float(v) for v in acc[~torch.isnan(acc)]}) > 1                 # the blocks are told apart


def scores_with_task(acc_by_block: dict[tuple[int, int], float], lengths: list[int]) -> ImportanceScores:
    model = make_tiny_model("llama")
    x = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    scores = estimate_importance(model, x, ImportanceSection(layer_loss_samples=0), show_progress=False)
    acc = torch.full((5, 5), float("nan"), dtype=torch.float64).fill_diagonal_(0.6)
    for (s, e), v in acc_by_block.items():
        acc[s, e] = v
    scores.tensors["layers.task.winogrande"] = acc
    scores.meta["depth_tasks"] = {"winogrande": {"examples": 64, "lengths": lengths, "seed": 1234, "source": "x"}}
    return scores


def test_prune_drops_the_block_with_the_highest_accuracy():
    scores = scores_with_task({(0, 2): 0.52, (1, 3): 0.58, (2, 4): 0.55}, [2])
    plan = make_plan(scores, PruneTarget(num_hidden_layers=2), depth_metric="task:winogrande")
    acc = scores.task_accuracy("winogrande", 2)
    start = int(torch.argmax(acc))
    assert start == 1 and plan.layers == [0, 3]
    assert plan.criteria["depth_metric"] == "task:winogrande" and plan.criteria["depth_task"]["examples"] == 64


def test_equal_accuracies_go_to_the_lowest_block_importance():
    scores = scores_with_task({(0, 2): 0.55, (1, 3): 0.55, (2, 4): 0.55}, [2])
    start = int(torch.argmin(scores.block_importance(2)))
    plan = make_plan(scores, PruneTarget(num_hidden_layers=2), depth_metric="task:winogrande")
    assert plan.layers == [i for i in range(4) if not start <= i < start + 2]


def test_missing_task_or_length_names_the_importance_flag():
    scores = scores_with_task({(0, 2): 0.5, (1, 3): 0.5, (2, 4): 0.5}, [2])
    with pytest.raises(CompactLMError, match="no depth metric for task 'hellaswag'.*--depth-tasks hellaswag"):
        make_plan(scores, PruneTarget(num_hidden_layers=2), depth_metric="task:hellaswag")
    with pytest.raises(CompactLMError, match="blocks of 1 layers.*--depth-task-lengths including 1"):
        make_plan(scores, PruneTarget(num_hidden_layers=3), depth_metric="task:winogrande")
    with pytest.raises(CompactLMError, match="needs a zero-shot task name"):
        make_plan(scores, PruneTarget(num_hidden_layers=2), depth_metric="task")
    with pytest.raises(CompactLMError, match="Unknown depth metric 'blok'. Did you mean 'block'"):
        make_plan(scores, PruneTarget(num_hidden_layers=2), depth_metric="blok")
    with pytest.raises(CompactLMError, match="takes no argument"):
        make_plan(scores, PruneTarget(num_hidden_layers=2), depth_metric="bi:winogrande")


def test_bad_depth_task_options_fail_before_the_pass():
    model, tok = make_tiny_model("llama"), make_char_tokenizer()
    x = torch.randint(3, 128, (2, 12))
    with pytest.raises(CompactLMError, match="Unknown task 'winogrand'"):
        estimate_importance(model, x, ImportanceSection(depth_tasks=["winogrand"]), tokenizer=tok, show_progress=False)
    with pytest.raises(CompactLMError, match="tokenizer"):
        estimate_importance(model, x, ImportanceSection(depth_tasks=["winogrande"]), show_progress=False)
    with pytest.raises(CompactLMError, match=r"block lengths must be in 1..3"):
        estimate_importance(model, x, ImportanceSection(depth_tasks=["winogrande"], depth_task_lengths=[4]), tokenizer=tok,
                            show_progress=False)
    with pytest.raises(CompactLMError, match="accuracy"):
        estimate_importance(model, x, ImportanceSection(depth_tasks=["wikitext2"]), tokenizer=tok, show_progress=False)
