"""Trainer behaviour in-process on tiny models: learning, fine-tuning, divergence, layer matching, export."""

from __future__ import annotations

import json

import pytest
from distill_fixtures import one_thread  # noqa: F401  (autouse)
import torch
from helpers import make_tiny_model
from transformers import AutoModelForCausalLM

from compactlm.distill import TrainArgs, TrainingDiverged, distill, finetune
from compactlm.distill.config import lr_at
from compactlm.distill.intermediate import IntermediateStateLoss, layer_map_from_plan
from compactlm.errors import CompactLMError

ARGS = dict(batch_size=4, micro_batch_size=2, checkpoint_every=0, val_every=0, precision="fp32", device="cpu")


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("COMPACTLM_NO_PROGRESS", "1")


def _pair(student_layers: int = 2, hidden: int = 48):
    teacher = make_tiny_model("llama", dtype=torch.float32, seed=0)
    student = make_tiny_model("llama", dtype=torch.float32, seed=1, num_hidden_layers=student_layers,
                              hidden_size=hidden, head_dim=12)
    return teacher, student


def _blocks(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 128, (n, 16), generator=torch.Generator().manual_seed(seed))


def test_distillation_lowers_heldout_kd_and_exports_a_plain_checkpoint(tmp_path):
    teacher, student = _pair()
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "prune_plan.json").write_text(json.dumps({"kept": {"layers": [1, 3]}}))
    result = distill(student, teacher, _blocks(64), tmp_path / "run", heldout=_blocks(8, 1),
                     student_dir=tmp_path / "student", args=TrainArgs(lr=3e-3, max_steps=24, **ARGS))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    assert first["step"] == 0 and "teacher_val_ppl" in first
    assert last["step"] == 24 and last["val_kd"] < 0.8 * first["val_kd"]
    assert "alpha" in rows[1] and rows[1]["alpha"] > 0        # auto: depth-pruned -> intermediate states on
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run", dtype=torch.float32)
    ids = _blocks(2, 5)
    torch.testing.assert_close(reloaded(ids).logits, student.eval()(ids).logits)
    assert json.loads((tmp_path / "run" / "prune_plan.json").read_text())["kept"]["layers"] == [1, 3]
    assert not result.interrupted and result.tokens == 24 * 4 * 16
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())  # frozen teacher


def test_finetune_lowers_lm_loss_on_repeated_text(tmp_path):
    model = make_tiny_model("llama", dtype=torch.float32, seed=0)
    blocks = _blocks(8).repeat(4, 1)
    finetune(model, blocks, tmp_path / "ft", heldout=blocks[:4], args=TrainArgs(lr=1e-2, max_steps=10, **ARGS))
    rows = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_lm_loss"] < rows[0]["val_lm_loss"] - 0.5
    assert "val_kd" not in rows[-1] and "lm_loss" in rows[1]


def test_nan_loss_stops_with_clear_message_and_keeps_checkpoint(tmp_path):
    teacher, student = _pair(4, 64)

    def poison(step: int) -> None:
        if step == 2:  # after the checkpoint at step 2, make the next forward produce NaN
            with torch.no_grad():
                student.model.norm.weight.fill_(float("nan"))

    args = TrainArgs(max_steps=5, **{**ARGS, "checkpoint_every": 2})
    with pytest.raises(TrainingDiverged, match=r"diverged at step 3.*step-0000002"):
        distill(student, teacher, _blocks(32), tmp_path / "run", args=args, on_step=poison)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000002"]


def test_setup_errors_are_reported_together(tmp_path):
    teacher, student = _pair()
    with pytest.raises(CompactLMError, match=r"multiple of.*raise --tokens"):
        distill(student, teacher, _blocks(2), tmp_path / "run", args=TrainArgs(batch_size=6, micro_batch_size=4))
    with pytest.raises(CompactLMError, match="no prune plan"):
        distill(student, teacher, _blocks(8), tmp_path / "run2", args=TrainArgs(**ARGS))


def test_layer_map_and_projection():
    assert layer_map_from_plan({"kept": {"layers": [0, 2, 5]}}, 3, 6) == [0, 2, 5]
    assert layer_map_from_plan(None, 4, 4) == [0, 1, 2, 3]
    with pytest.raises(CompactLMError, match="does not fit"):
        layer_map_from_plan(None, 2, 4, given=[0, 9])
    loss = IntermediateStateLoss(3, 5, hidden_init=[4, 0, 2])
    s = torch.randn(2, 4, 3)
    t = torch.zeros(2, 4, 5)
    t[..., [4, 0, 2]] = s                     # the teacher states restricted to the kept channels
    assert loss([s], [t], torch.ones(2, 4)).abs() < 1e-6  # selection init: zero cosine distance


def test_lr_schedule_warmup_then_cosine_to_min():
    args = TrainArgs(lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert lr_at(0, 100, args) == pytest.approx(1e-4)
    assert lr_at(9, 100, args) == pytest.approx(1e-3)
    assert lr_at(100, 100, args) == pytest.approx(1e-4)
    assert TrainArgs().warmup(30) == 3 and TrainArgs().warmup(10_000) == 40


def test_metric_loggers_registry(tmp_path):
    import importlib.util

    from compactlm.distill.metrics import build_loggers

    with pytest.raises(CompactLMError, match="Unknown metric logger 'tensorbord'. Did you mean 'tensorboard'"):
        build_loggers("tensorbord", tmp_path, {}, None)
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(CompactLMError, match="pip install tensorboard"):
            build_loggers("tensorboard", tmp_path, {}, None)
