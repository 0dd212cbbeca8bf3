"""`compactlm run` killed in every stage (SIGKILL and SIGTERM), resumed each time: the uninterrupted result.

One run directory is killed at each point of ``CHAIN`` in turn, each time by a fresh process
(``kill_run.py``) that resumes it and dies at the next point; a last ``--resume`` finishes it. The
student, the GGUF files, the search table and the evaluation must equal those of a run that was
never stopped, bit for bit, and every record must be written once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from export.gguf_fixtures import VOCAB, save_bpe_tokenizer
from helpers import make_tiny_model
from safetensors.torch import load_file

from compactlm.cli import main
from compactlm.recipes.run_dir import RunLayout

GGUFReader = pytest.importorskip("gguf").GGUFReader

KILL_RUN = Path(__file__).with_name("kill_run.py")
ENV = {**os.environ, "COMPACTLM_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "COMPACTLM_ALLOCATOR": "system"}
# every stage of a run, alternating the signals; the bf16 run repeats the two that train
CHAIN = [("importance", "SIGKILL"), ("search-proxy", "SIGTERM"), ("search-distill", "SIGKILL"), ("prune", "SIGTERM"),
         ("distill", "SIGKILL"), ("export", "SIGTERM"), ("eval", "SIGKILL"), ("report", "SIGTERM")]
BF16_CHAIN = [("search-distill", "SIGTERM"), ("distill", "SIGKILL")]
EXIT = {"SIGKILL": -9, "SIGTERM": 143}


def _recipe(tmp_path: Path, text_file: Path, precision: str) -> Path:
    teacher = tmp_path / "teacher"
    make_tiny_model("llama", dtype=torch.float32, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2,
                    initializer_range=0.3).save_pretrained(teacher)
    save_bpe_tokenizer(teacher)
    recipe = {
        "teacher": str(teacher), "precision": precision,
        "data": {"source": str(text_file), "seq_len": 32, "heldout_samples": 4, "seed": 0},
        "importance": {"samples": 8, "batch_size": 4, "layer_loss_samples": 2},
        "steps": [{"name": "student", "target_params": 0.8,
                   "search": {"tolerance": 0.1, "max_depth_cut": 0.25, "max_candidates": 4, "top_k": 2,
                              "distill_tokens": 256},
                   "distill": {"tokens": 512, "train": {"batch_size": 2, "micro_batch_size": 2, "precision": precision,
                                                        "lr": 1e-3, "min_lr": 1e-4, "val_every": 4,
                                                        "checkpoint_every": 2}}}],
        "eval": {"tasks": [], "batch_size": 4, "max_new_tokens": 4},
        "export": {"gguf": ["f32", "q8_0"], "tokenizer_pre": "default"},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _gguf(path: Path) -> tuple[dict, dict]:
    """(metadata but the model's name, which is its directory; tensor bytes) of a GGUF file."""
    reader = GGUFReader(path)
    meta = {k: f.contents() for k, f in reader.fields.items() if k != "general.name"}
    return meta, {t.name: t.data.tobytes() for t in reader.tensors}


def _rows(path: Path) -> list[dict]:
    """metrics.jsonl without what depends on the clock (speed, MFU, times)."""
    timing = ("time", "elapsed", "seconds", "tok_per_s", "tokens_per_second", "mfu")
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in path.read_text().splitlines()]


@pytest.mark.parametrize("precision, chain", [("fp32", CHAIN), ("bf16", BF16_CHAIN)], ids=["fp32", "bf16"])
def test_killed_in_every_stage_then_resumed_equals_uninterrupted(precision, chain, tmp_path, text_file):
    recipe = _recipe(tmp_path, text_file, precision)
    assert main(["-q", "run", str(recipe), "--out", str(tmp_path / "reference")]) == 0
    out = tmp_path / "killed"
    for i, (point, sig) in enumerate(chain):
        done = subprocess.run([sys.executable, str(KILL_RUN), point, sig, "-q", "run", str(recipe), "--out", str(out),
                               *(["--resume"] if i else [])], env=ENV, capture_output=True, text=True, timeout=300)
        assert done.returncode == EXIT[sig], (point, done.stdout[-2000:], done.stderr[-3000:])
    assert main(["-q", "run", str(recipe), "--out", str(out), "--resume"]) == 0

    ref, got = RunLayout(tmp_path / "reference"), RunLayout(out)
    a, b = (load_file(str(r.step("student").distilled / "model.safetensors")) for r in (ref, got))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for quant in ("f32", "q8_0"):
        assert _gguf(ref.gguf(quant)) == _gguf(got.gguf(quant)), quant
    search = [json.loads(r.step("student").search.candidates_json.read_text())["candidates"] for r in (ref, got)]
    assert search[0] == search[1]
    evals = [json.loads(r.eval.read_text())["rows"] for r in (ref, got)]
    assert [(r["model"], r["metrics"]) for r in evals[0]] == [(r["model"], r["metrics"]) for r in evals[1]]
    # every record once: the stages in order, one metrics row per step, one session per start
    states = [json.loads(r.state.read_text()) for r in (ref, got)]
    assert list(states[0]["stages"]) == list(states[1]["stages"])
    assert len(states[1]["sessions"]) == len(chain) + 1
    metrics = [_rows(r.step("student").distill_metrics) for r in (ref, got)]
    assert [m["step"] for m in metrics[1]] == [m["step"] for m in metrics[0]]
    assert metrics[0] == metrics[1]
    assert got.report.is_file()
    # nothing half-written left anywhere in the run directory
    leftovers = [p for p in out.rglob(".*") if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []
