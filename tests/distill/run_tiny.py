"""Subprocess entry for the resume and multi-process tests: a tiny teacher/student run from the command line.

Usage: python run_tiny.py OUT [--steps N] [--kill-at STEP] [--resume] [--micro M] [--batch B] [--intermediate on|off]
    [--strategy auto|ddp|fsdp] [--teacher-placement shard|replicate|offload]
``--term-at`` sends SIGTERM after that step (the run checkpoints and exits 143 = 128 + SIGTERM);
``--kill-at`` sends SIGKILL to this process right after that optimizer step: no clean-up at all; with
``--kill-rank R`` only the process of that rank dies (the others must notice and stop).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for helpers
from helpers import make_tiny_model  # noqa: E402

from compactlm.distill import LossArgs, TrainArgs, distill  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--kill-at", type=int, default=None)
    p.add_argument("--kill-rank", type=int, default=None)
    p.add_argument("--term-at", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--micro", type=int, default=2)
    p.add_argument("--intermediate", default="on")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--strategy", default="auto")
    p.add_argument("--teacher-placement", default="shard")
    a = p.parse_args()
    torch.set_num_threads(1)
    teacher = make_tiny_model("llama", dtype=torch.float32, seed=0)
    student = make_tiny_model("llama", dtype=torch.float32, seed=1, num_hidden_layers=2, hidden_size=48, head_dim=12)
    blocks = torch.randint(3, 128, (40, 12), generator=torch.Generator().manual_seed(0))
    heldout = torch.randint(3, 128, (4, 12), generator=torch.Generator().manual_seed(1))

    def on_step(step: int) -> None:
        if step == a.kill_at and a.kill_rank in (None, int(os.environ.get("RANK", "0"))):
            os.kill(os.getpid(), signal.SIGKILL)
        if step == a.term_at:
            os.kill(os.getpid(), signal.SIGTERM)  # polite: the trainer checkpoints after the next step

    result = distill(student, teacher, blocks, a.out, heldout=heldout, resume=a.resume, overwrite=not a.resume, on_step=on_step,
            loss=LossArgs(intermediate=a.intermediate, layer_map=[1, 3], chunk_size=16, clm_weight=0.1),
            args=TrainArgs(lr=3e-3, batch_size=a.batch, micro_batch_size=a.micro, max_steps=a.steps,
                           checkpoint_every=2, val_every=3, precision=a.precision, keep_checkpoints=2, device="cpu",
                           strategy=a.strategy, teacher_placement=a.teacher_placement))
    if not result.interrupted and a.strategy == "fsdp":
        _check_handed_back(student, a.out)
    sys.exit(result.exit_code)


def _check_handed_back(student, out: str) -> None:
    """FSDP trains a sharded copy: the caller's student must come back plain, holding the exported weights."""
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM

    assert not any(isinstance(p, DTensor) for p in student.parameters()), "the caller's student was left sharded"
    exported = dict(AutoModelForCausalLM.from_pretrained(out).named_parameters())
    for name, p in student.named_parameters():
        assert torch.equal(p.detach().cpu(), exported[name].detach()), f"{name} differs from the export"


if __name__ == "__main__":
    main()
