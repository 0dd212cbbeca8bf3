"""The frozen teacher of a run, borrowed from the caller and handed back as it was.

The trainer never changes the caller's teacher in a way it cannot undo exactly:

- **dtype.** ``teacher_dtype: auto`` keeps the teacher's own dtype. Its forward runs under the
  run's autocast (:func:`compactlm.hardware.autocast`), so under bf16 training an fp32 teacher's
  matmuls take bf16 operands, the same products a bf16 copy of its weights would give, while
  norms, embeddings and the residual stream stay fp32. (A cast to bf16 in place, what the trainer
  did before, loses the low mantissa bits for good.) The cost: autocast recasts the frozen
  weights on every forward, and an fp32 teacher holds twice the memory of a bf16 one. An
  explicit ``bf16`` or ``fp32`` that differs from the teacher's dtype makes a converted copy
  (logged; only the converted weights are allocated, see :func:`converted_copy`) and leaves the
  caller's model alone; an explicit dtype equal to the teacher's uses it as it is.
- **device, eval(), requires_grad.** The teacher is moved to the training device, put in eval
  mode and frozen for the run; :func:`frozen_teacher` restores all three when the run returns or
  raises (device moves are lossless).
- **hooks.** The intermediate-state recorder is attached for the run and removed on exit.
- **sharding.** Under FSDP the teacher is sharded by default; sharding changes a module in
  place, so the run shards a copy (:func:`compactlm.distill.sharding.shard_teacher`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain

import torch
from torch import nn

from ..arch import LogitTransform, adapter_for
from .intermediate import StateRecorder

logger = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass
class TeacherOutputs:
    """What one teacher forward gives the student's loss (no logits: the loss applies ``head`` chunk by chunk)."""

    hidden: torch.Tensor
    """(B, T, H_t) final hidden states (after the final norm)"""
    head: nn.Module
    """the teacher's LM head"""
    states: list[torch.Tensor] | None = None
    """(B, T, H_t) embedding output then the matched layers' outputs, when intermediate states are on"""
    transform: LogitTransform | None = None
    """what the teacher's family does to the head's output (Granite's scaling, Gemma's soft-cap)"""


class Teacher:
    """A frozen teacher ready for the run: decoder body, LM head and the optional state recorder."""

    def __init__(self, model: nn.Module, recorder: StateRecorder | None = None) -> None:
        adapter = adapter_for(model.config)
        self.model = model
        self.body = adapter.decoder_body(model)
        self.head = model.get_submodule(adapter.lm_head)
        self.transform = LogitTransform.of(model.config)
        self.recorder = recorder

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor) -> TeacherOutputs:
        """``input_ids`` (B, T) → :class:`TeacherOutputs`; run it under the run's autocast."""
        hidden = self.body(input_ids=input_ids, use_cache=False).last_hidden_state   # (B, T, H_t)
        return TeacherOutputs(hidden, self.head, self.recorder.pop() if self.recorder is not None else None,
                              self.transform)


def converted_copy(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A deep copy of ``model`` on ``device`` in ``dtype``; the original is untouched.

    The parameters are converted first and handed to ``deepcopy`` through its memo, so the copy
    never holds a second full-precision set (tied weights stay tied: one object, one entry).
    """
    memo = {id(p): nn.Parameter(p.detach().to(device=device, dtype=dtype if p.is_floating_point() else None),
                                requires_grad=False) for p in model.parameters()}
    return copy.deepcopy(model, memo).to(device=device, dtype=dtype)


@contextlib.contextmanager
def _borrowed(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """``model`` on ``device``, in eval mode, without gradients; device, modes and flags restored on exit."""
    tensors = dict(chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)))
    devices = {name: t.device for name, t in tensors.items()}
    grads = {name: p.requires_grad for name, p in model.named_parameters(remove_duplicate=False)}
    modes = {m: m.training for m in model.modules()}
    try:
        yield model.to(device).eval().requires_grad_(False)
    finally:
        if len(set(devices.values())) == 1:
            model.to(next(iter(devices.values())))
        else:  # spread over devices: put every tensor back where it was
            current = dict(chain(model.named_parameters(remove_duplicate=False),
                                 model.named_buffers(remove_duplicate=False)))
            for name, t in current.items():
                if t.device != devices[name]:
                    t.data = t.data.to(devices[name])
        for name, p in model.named_parameters(remove_duplicate=False):
            p.requires_grad_(grads[name])
        for m, training in modes.items():
            m.training = training


@contextlib.contextmanager
def frozen_teacher(model: nn.Module, device: torch.device, teacher_dtype: str = "auto",
                   layers: list[int] | None = None,
                   shard: Callable[[nn.Module, torch.dtype], nn.Module] | None = None) -> Iterator[Teacher]:
    """The teacher for a run (see the module docstring for the dtype rule); ``layers`` attaches a state recorder.

    ``shard(model, dtype)`` returns a sharded copy in ``dtype`` (FSDP,
    :func:`compactlm.distill.sharding.shard_teacher`); the teacher runs that copy.
    """
    own = next(model.parameters()).dtype
    want = DTYPES.get(teacher_dtype, own)
    with contextlib.ExitStack() as stack:
        if shard is not None:
            model = shard(model, want)
        elif want != own:
            logger.info("teacher: running a %s copy (teacher_dtype %s; the given teacher is %s and is left as is)",
                        want, teacher_dtype, own)
            model = converted_copy(model, device, want).eval()
        else:
            model = stack.enter_context(_borrowed(model, device))
        recorder = stack.enter_context(StateRecorder(model, layers).attached()) if layers is not None else None
        yield Teacher(model, recorder)
