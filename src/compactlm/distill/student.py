"""The trainable side of a run: student + loss modules in one ``nn.Module``, and the export.

Wrapping student, LM-head loss and intermediate-state projection in one module lets DDP see
every trainable parameter, including the LM head that the chunked loss applies outside the
student's own ``forward``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ..arch import adapter_for
from .intermediate import IntermediateStateLoss, StateRecorder
from .losses import ChunkedLogitLoss

PLAN_FILE = "prune_plan.json"
PROVENANCE_FILE = "compactlm_provenance.json"


class DistillModule(nn.Module):
    """Student forward + losses. ``forward`` returns the normalised loss to backpropagate and its parts.

    Arguments of ``forward``: ``input_ids`` (B, T); ``teacher_hidden`` (B, T, H_t) final teacher
    states or None; ``teacher_head``; ``teacher_states`` list of (B, T, H_t) matched states or None;
    ``labels`` (B, T) with -100 where there is no next token; ``mask`` (B, T) float; and the
    normalisers ``kd_scale`` / ``clm_scale`` (weight over the global token count of the step).
    """

    def __init__(self, student: nn.Module, logit_loss: ChunkedLogitLoss,
                 intermediate: IntermediateStateLoss | None = None, student_layers: list[int] | None = None) -> None:
        super().__init__()
        adapter = adapter_for(student.config)
        self.student = student
        self.logit_loss = logit_loss
        self.intermediate = intermediate
        self.adapter = adapter
        self.recorder = StateRecorder(student, student_layers) if intermediate is not None else None

    # Looked up, not stored: as attributes they would register the student's modules twice.
    @property
    def body(self) -> nn.Module:
        return self.adapter.decoder_body(self.student)

    @property
    def head(self) -> nn.Module:
        return self.student.get_submodule(self.adapter.lm_head)

    def forward(self, input_ids: torch.Tensor, teacher_hidden: torch.Tensor | None, teacher_head: nn.Module | None,
                teacher_states: list[torch.Tensor] | None, labels: torch.Tensor, mask: torch.Tensor,
                kd_scale: float, clm_scale: float) -> dict[str, torch.Tensor]:
        hidden = self.body(input_ids=input_ids).last_hidden_state                       # (B, T, H_s)
        t_flat = teacher_hidden.flatten(0, 1) if teacher_hidden is not None else None   # (B*T, H_t)
        terms = self.logit_loss(hidden.flatten(0, 1), self.head, t_flat, teacher_head,
                                labels.flatten(), mask.flatten(), kd_scale, clm_scale)
        out = {"loss": terms.total, "kd_sum": terms.kd_sum, "clm_sum": terms.clm_sum}
        if self.recorder is not None:
            states = self.recorder.pop()
            if self.intermediate is not None and teacher_states is not None and torch.is_grad_enabled():
                # L = L_logits + α·L_is with α = L_logits / L_is (detached): both terms weigh the same.
                l_is = self.intermediate(states, teacher_states, mask) * kd_scale
                alpha = terms.total.detach() / l_is.detach().clamp_min(1e-12)
                out.update(loss=terms.total + alpha * l_is, is_sum=l_is.detach() / kd_scale, alpha=alpha)
        return out


def export_student(student: nn.Module, tokenizer, dest: Path, *, plan_dir: str | Path | None = None,
                   provenance: dict | None = None) -> None:
    """Write a plain Hugging Face checkpoint (safetensors, config, tokenizer, prune plan) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(dest, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(dest)
    if plan_dir is not None and (Path(plan_dir) / PLAN_FILE).is_file():
        shutil.copy2(Path(plan_dir) / PLAN_FILE, dest / PLAN_FILE)
    record = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv), **(provenance or {})}
    (dest / PROVENANCE_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")


def publish_export(run_dir: Path, write) -> None:
    """Export into ``run_dir`` itself, next to checkpoints/ and metrics.jsonl, so the run loads as a model.

    Files go to a hidden temp folder first and are renamed into place one by one, config.json last:
    a directory whose config.json is present holds a complete export.
    """
    tmp = run_dir / ".export-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    names = sorted(p.name for p in tmp.iterdir())
    names.sort(key=lambda n: n == "config.json")
    if (run_dir / "config.json").exists():
        os.unlink(run_dir / "config.json")  # the export is incomplete until config.json is back
    for name in names:
        with open(tmp / name, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp / name, run_dir / name)
    shutil.rmtree(tmp, ignore_errors=True)
