"""The trainable side of a run: student + loss modules in one ``nn.Module``.

Wrapping student, LM-head loss and intermediate-state projection in one module lets DDP see
every trainable parameter, including the LM head that the chunked loss applies outside the
student's own ``forward``. The trained student is exported by
:func:`compactlm.export.write_model_dir`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import LogitTransform, adapter_for
from .intermediate import IntermediateStateLoss, StateRecorder
from .losses import ChunkedLogitLoss
from .teacher import TeacherOutputs


@dataclass
class DistillOutput:
    """What :class:`DistillModule` returns for one micro-batch: the loss to backpropagate and its detached parts."""

    loss: torch.Tensor
    """scalar, differentiable: this micro-batch's share of the global-batch mean"""
    kd_sum: torch.Tensor
    """sum over tokens of the logit loss (scalar)"""
    clm_sum: torch.Tensor
    """sum over labelled tokens of the student's cross-entropy (scalar)"""
    is_sum: torch.Tensor | None = None
    """sum over tokens of the intermediate-state loss, when it is on and gradients are enabled"""
    alpha: torch.Tensor | None = None
    """its weight α = L_logits / L_is (detached)"""


class DistillModule(nn.Module):
    """Student forward + losses in one module (what DDP, and later FSDP, wraps).

    ``student_layers`` (with ``intermediate``) names the student layers whose outputs the
    intermediate-state loss reads; their hooks exist only inside :meth:`recording`.
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

    def recording(self) -> contextlib.AbstractContextManager:
        """Attach the student's state hooks for a run (a no-op without the intermediate-state loss)."""
        return self.recorder.attached() if self.recorder is not None else contextlib.nullcontext()

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                teacher: TeacherOutputs | None = None, *, kd_scale: float, clm_scale: float) -> DistillOutput:
        """``input_ids`` and ``labels`` (B, T), ``labels`` -100 where there is no next token; ``mask`` (B, T) float.

        ``kd_scale`` / ``clm_scale``: weight over the global token count of the step, so the
        returned loss is already this micro-batch's share of the global mean. Without
        ``teacher`` only the LM term is computed.
        """
        hidden = self.body(input_ids=input_ids).last_hidden_state                       # (B, T, H_s)
        t_flat = teacher.hidden.flatten(0, 1) if teacher is not None else None           # (B*T, H_t)
        terms = self.logit_loss(hidden.flatten(0, 1), self.head, t_flat, teacher.head if teacher is not None else None,
                                labels.flatten(), mask.flatten(), kd_scale, clm_scale, LogitTransform.of(self.student.config),
                                teacher.transform if teacher is not None else None)
        out = DistillOutput(terms.total, terms.kd_sum, terms.clm_sum)
        if self.recorder is not None:
            states = self.recorder.pop()
            if teacher is not None and teacher.states is not None and torch.is_grad_enabled():
                # L = L_logits + α·L_is with α = L_logits / L_is (detached): both terms weigh the same.
                l_is = self.intermediate(states, teacher.states, mask) * kd_scale
                alpha = terms.total.detach() / l_is.detach().clamp_min(1e-12)
                out = DistillOutput(terms.total + alpha * l_is, terms.kd_sum, terms.clm_sum, l_is.detach() / kd_scale,
                                    alpha)
        return out
