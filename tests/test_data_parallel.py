"""Every data stage under 2 gloo processes gives the 1-process files: scores, search table, eval JSON.

Tolerances: the activation moments are float64 sums added in another order (measured here:
4e-16 relative; asserted rtol 1e-12); taylor scores come from float32 gradients summed in
another order (measured 1e-7; asserted rtol 1e-5). Every other statistic, the layer losses,
task accuracies, proxy losses and every eval record are exactly equal: the processes run the
one-process batches and their results are gathered and added in the one-process order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_char_tokenizer, make_tiny_model
from importance.test_depth_task import winogrande_rows
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("data_parallel_entry.py")
EXACT = ("layers.loss", "layers.task.winogrande")


@pytest.fixture
def fixtures(tmp_path: Path) -> Path:
    root = tmp_path / "fixtures"
    model = make_tiny_model("llama", dtype=torch.float32)
    model.save_pretrained(root / "model")
    make_char_tokenizer().save_pretrained(root / "model")
    para = ("The quick brown fox jumps over the lazy dog. Pruning keeps the important neurons. "
            "Distillation teaches the student with the teacher's logits.\n\n")
    (root / "text.txt").write_text(para * 20)
    (root / "tasks" / "winogrande").mkdir(parents=True)
    (root / "tasks" / "winogrande" / "validation.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in winogrande_rows()))
    return root


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "importance.safetensors"))


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_processes_write_the_one_process_files(tmp_path, fixtures):
    env = {**os.environ, "COMPACTLM_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1", "LD_PRELOAD": ""}  # see compactlm.cli.tcmalloc
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.Popen([sys.executable, str(SCRIPT), str(fixtures), str(one)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                            str(SCRIPT), str(fixtures), str(two)], env=env, capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr[-4000:]
    assert single.wait(timeout=300) == 0, single.stdout.read()[-4000:]

    # importance: activation moments + every layer metric, and the taylor criterion
    for name, rtol in (("scores", 1e-12), ("taylor", 1e-5)):
        a, b = _tensors(one / name), _tensors(two / name)
        assert a.keys() == b.keys()
        for key in a:
            if key in EXACT:
                assert torch.equal(a[key].nan_to_num(-1), b[key].nan_to_num(-1)), key
            else:
                torch.testing.assert_close(b[key], a[key], rtol=rtol, atol=1e-12, msg=key)
        meta_a, meta_b = (json.loads((d / name / "importance.json").read_text()) for d in (one, two))
        assert meta_b["tokens"] == meta_a["tokens"] and meta_b["processes"] == 2
        assert meta_b["depth_tasks"] == meta_a["depth_tasks"]
    # search: the same table, proxy losses equal exactly; the short distillation as the trainer's 2-process test
    rows_a, rows_b = (json.loads((d / "search" / "candidates.json").read_text())["candidates"] for d in (one, two))
    assert len(rows_a) >= 2 and sum(r["retrained_loss"] is not None for r in rows_a) == 1
    for a, b in zip(rows_a, rows_b):
        la, lb = a.pop("retrained_loss"), b.pop("retrained_loss")
        assert (la is None and lb is None) or lb == pytest.approx(la, rel=1e-5)
    assert rows_b == rows_a
    # eval: metrics and every per-example record
    res_a, res_b = (json.loads((d / "eval.json").read_text())["results"]["model"] for d in (one, two))
    for task in res_a:
        res_a[task].pop("seconds"), res_b[task].pop("seconds")
    assert res_b == res_a
    assert res_a["winogrande"]["n"] == 7 and len(res_a["winogrande"]["samples"]) == 7
    # rank 0 alone printed
    assert multi.stdout.count("importance:") == 2 and multi.stdout.count("<- selected") == 1
