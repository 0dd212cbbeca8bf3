"""Trainer behaviour in-process on tiny models: learning, fine-tuning, divergence, layer matching, export."""

from __future__ import annotations

import json

import pytest
import torch
from distill_fixtures import one_thread  # noqa: F401  (autouse)
from helpers import make_tiny_model
from transformers import AutoModelForCausalLM

from compactlm.distill import LossArgs, TrainArgs, TrainingDiverged, distill, finetune
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


def _hooks(model) -> list:
    return [h for m in model.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]


def _snapshot(model) -> tuple:
    """Weights (exact), training modes, requires_grad flags, dtypes and devices of ``model``."""
    return ({k: v.clone() for k, v in model.state_dict().items()}, {m.training for m in model.modules()},
            {p.requires_grad for p in model.parameters()}, {p.dtype for p in model.parameters()},
            {p.device for p in model.parameters()})


def _assert_unchanged(model, before: tuple) -> None:
    after = _snapshot(model)
    assert after[1:] == before[1:]
    assert after[0].keys() == before[0].keys() and all(after[0][k].equal(v) for k, v in before[0].items())
    assert not _hooks(model)   # the state recorder's hooks are gone


def test_distillation_lowers_heldout_kd_and_exports_a_plain_checkpoint(tmp_path):
    teacher, student = _pair()
    teacher.train()   # the caller's modes and flags come back as they were
    before = _snapshot(teacher)
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "prune_plan.json").write_text(json.dumps({"kept": {"layers": [1, 3]}}))
    during = []
    result = distill(student, teacher, _blocks(64), tmp_path / "run", heldout=_blocks(8, 1),
                     student_dir=tmp_path / "student", args=TrainArgs(lr=3e-3, max_steps=24, **ARGS),
                     on_step=lambda step: during.append(_snapshot(teacher)[1:3]))
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
    assert during and all(d == ({False}, {False}) for d in during)   # frozen during the run: eval, no grad
    _assert_unchanged(teacher, before)
    assert not _hooks(student)


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
    before = _snapshot(teacher)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 3.*step-0000002"):
        distill(student, teacher, _blocks(32), tmp_path / "run", args=args, on_step=poison)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000002"]
    _assert_unchanged(teacher, before)   # handed back as it came, also when the run raises
    assert not _hooks(student)


@pytest.mark.parametrize("teacher_dtype", ["auto", "bf16"])
def test_the_callers_teacher_keeps_its_dtype(tmp_path, teacher_dtype):
    """bf16 training: auto runs the fp32 teacher under autocast, bf16 runs a converted copy; the teacher is untouched."""
    teacher, student = _pair()
    before = _snapshot(teacher)
    seen = []
    original_linear = torch.nn.functional.linear

    def spy(x, w, *rest):   # the dtype of the teacher LM head's weight as the loss sees it
        if w.shape == teacher.lm_head.weight.shape and not w.requires_grad:
            seen.append(w.dtype)
        return original_linear(x, w, *rest)

    args = TrainArgs(max_steps=2, teacher_dtype=teacher_dtype, **{**ARGS, "precision": "bf16"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.nn.functional, "linear", spy)
        result = distill(student, teacher, _blocks(16), tmp_path / "run", args=args,
                         loss=LossArgs(intermediate="on", layer_map=[1, 3]))
    assert result.step == 2 and result.precision["precision"] == "bf16"
    assert set(seen) == {torch.float32 if teacher_dtype == "auto" else torch.bfloat16}
    _assert_unchanged(teacher, before)


def test_setup_errors_are_reported_together(tmp_path):
    teacher, student = _pair()
    with pytest.raises(CompactLMError, match=r"multiple of.*raise the tokens"):
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


def test_converted_copy_keeps_ties_and_leaves_the_original():
    import copy

    from compactlm.distill.teacher import converted_copy

    model = make_tiny_model("llama", dtype=torch.float32, seed=0, tie_word_embeddings=True)
    before = _snapshot(model)
    converted = converted_copy(model, torch.device("cpu"), torch.bfloat16)
    assert converted.lm_head.weight is converted.model.embed_tokens.weight               # still tied: one tensor
    assert {p.dtype for p in converted.parameters()} == {torch.bfloat16}
    _assert_unchanged(model, before)
    ids = _blocks(2)
    expected = copy.deepcopy(model).to(torch.bfloat16)(ids).logits                          # the plain in-place cast
    assert converted(ids).logits.equal(expected)
