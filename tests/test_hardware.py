"""Precision choice by what the device runs, measured GEMM rates, model FLOPs."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import make_tiny_model

from compactlm import hardware
from compactlm.errors import CompactLMError


@pytest.fixture
def config():
    return make_tiny_model("llama", dtype=torch.float32).config


@pytest.fixture
def fake_rates(monkeypatch):
    """Replace the micro-benchmark by given rates; returns a setter."""
    def set_rates(fp32: float, bf16: float, native: bool) -> None:
        monkeypatch.setattr(hardware, "measured_rates", lambda *a, **k: {"fp32": fp32, "bf16": bf16})
        monkeypatch.setattr(hardware, "native_bf16", lambda device="cpu": native)
    return set_rates


def test_auto_picks_bf16_only_where_native_and_faster(config, fake_rates):
    fake_rates(fp32=300, bf16=600, native=True)
    assert hardware.choose_precision("auto", config).precision == "bf16"
    fake_rates(fp32=300, bf16=600, native=False)        # fast-looking but emulated: never trusted
    assert hardware.choose_precision("auto", config).precision == "fp32"
    fake_rates(fp32=300, bf16=250, native=True)          # native but slower at these shapes
    choice = hardware.choose_precision("auto", config)
    assert choice.precision == "fp32" and choice.peak_gflops == 300 and not choice.bf16


def test_explicit_choice_is_honoured_with_a_warning_when_much_slower(config, fake_rates, caplog):
    fake_rates(fp32=300, bf16=50, native=False)
    with caplog.at_level(logging.WARNING, logger="compactlm.hardware"):
        choice = hardware.choose_precision("bf16", config)
    assert choice.precision == "bf16" and choice.bf16
    assert "6.0x slower than fp32" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="compactlm.hardware"):
        hardware.choose_precision("fp32", config)
    assert caplog.text == ""


def test_non_fp32_models_run_in_their_own_dtype_without_measuring(config, monkeypatch):
    monkeypatch.setattr(hardware, "measured_rates", lambda *a, **k: pytest.fail("measured"))
    choice = hardware.choose_precision("auto", config, dtype=torch.float64)
    assert choice.precision == "float64" and not choice.bf16 and choice.peak_gflops is None
    assert not hardware.choose_precision("bf16", config, dtype=torch.bfloat16).bf16   # already bf16: no autocast


def test_unknown_precision_is_refused(config):
    with pytest.raises(CompactLMError, match="expected one of auto, bf16, fp32"):
        hardware.choose_precision("fp8", config)


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    monkeypatch.delenv("COMPACTLM_NATIVE_BF16", raising=False)
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert hardware.native_bf16("cpu")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512f", "avx2"}))
    assert not hardware.native_bf16("cpu")
    assert "native bf16: no" in hardware.device_kind("cpu")


def test_rates_are_measured_once_per_machine_and_shape(config, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPACTLM_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(hardware, "_time_gemms", lambda shapes, dtype, device, seconds, rows: calls.append(dtype) or 100.0)
    first = hardware.measured_rates(config)
    assert hardware.measured_rates(config) == first == {"fp32": 100.0, "bf16": 100.0}
    assert calls == [torch.float32, torch.bfloat16]
    wider = make_tiny_model("llama", dtype=torch.float32, intermediate_size=128).config
    hardware.measured_rates(wider)
    assert len(calls) == 4 and (tmp_path / "gemm_rates.json").is_file()


def test_micro_benchmark_measures_both_precisions(config):
    rates = hardware.measured_rates(config, use_cache=False, seconds=0.05)   # timings are never asserted
    assert set(rates) == {"fp32", "bf16"} and rates["fp32"] > 0 and rates["bf16"] > 0


@pytest.mark.parametrize("tied", [True, False])
def test_model_flops_count_every_matmul_weight(tied):
    model = make_tiny_model("llama", dtype=torch.float32, tie_word_embeddings=tied)
    c = model.config
    per_layer = c.hidden_size * 16 * (4 + 2 + 2) + c.hidden_size * 16 * 4 + 3 * c.hidden_size * c.intermediate_size
    expected = c.num_hidden_layers * per_layer + c.vocab_size * c.hidden_size      # layers + LM head
    assert hardware.matmul_params(model) == expected
    assert hardware.train_flops_per_token(model) == 3 * hardware.forward_flops_per_token(model) == 6 * expected
    assert hardware.mfu(6 * expected, 1000.0, 6 * expected * 1000.0 / 1e9) == pytest.approx(1.0)


def test_trainer_records_and_resumes_in_the_chosen_precision(tmp_path, fake_rates):
    from compactlm.distill import TrainArgs, distill
    from compactlm.distill.checkpoint import latest_checkpoint, read_state

    teacher = make_tiny_model("llama", dtype=torch.float32, seed=1)
    student = make_tiny_model("llama", dtype=torch.float32, intermediate_size=64)
    blocks = torch.randint(0, 128, (8, 16), generator=torch.Generator().manual_seed(0))
    fake_rates(fp32=100, bf16=400, native=True)
    args = TrainArgs(batch_size=2, micro_batch_size=2, max_steps=2, checkpoint_every=1, val_every=0)
    distill(student, teacher, blocks, tmp_path / "run", args=args)
    settings = read_state(latest_checkpoint(tmp_path / "run"))["settings"]
    assert settings["precision"] == "auto" and settings["precision_used"] == "bf16"
    assert settings["gemm_gflops"] == {"fp32": 100, "bf16": 400}
    # the same run resumed where auto would choose fp32 keeps bf16: resuming equals never stopping
    fake_rates(fp32=400, bf16=100, native=False)
    from compactlm.distill.checkpoint import recorded_precision

    assert recorded_precision(tmp_path / "run") == "bf16"


def test_native_bf16_override(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    monkeypatch.setenv("COMPACTLM_NATIVE_BF16", "0")
    assert not hardware.native_bf16("cpu")
    monkeypatch.setenv("COMPACTLM_NATIVE_BF16", "1")
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset())
    assert hardware.native_bf16("cpu")
