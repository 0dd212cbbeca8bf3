"""The training recipe, top to bottom: distillation when a teacher is given, plain LM fine-tuning otherwise.

:func:`train` builds the run once (:func:`~compactlm.distill.setup.setup`), validates at step 0,
then loops: :func:`~compactlm.distill.steps.loss_step` (every micro-batch's forward and
backward, see :mod:`compactlm.distill.steps`), gradient clipping, a NaN/inf check that stops
before the update, the optimizer step, metrics, :func:`~compactlm.distill.steps.validate` and
:func:`~compactlm.distill.steps.checkpoint` on schedule, and a clean stop on SIGINT/SIGTERM.
The caller's teacher is borrowed and handed back unchanged (:mod:`compactlm.distill.teacher`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CompactLMError, Terminated
from ..export.save import publish_export
from ..hardware import mfu
from ..parallel import all_reduce_sum, barrier, peer_lost
from ..progress import progress
from ..readers import clip
from .checkpoint import RESUME_KEYS, latest_checkpoint
from .config import LossArgs, TrainArgs, lr_at
from .setup import TrainSetup, setup
from .sharding import norm_value
from .steps import StepSums, checkpoint, loss_step, validate

__all__ = ["RESUME_KEYS", "TrainResult", "TrainingDiverged", "distill", "finetune", "train"]

logger = logging.getLogger(__name__)


class TrainingDiverged(CompactLMError):
    """The loss or gradient became NaN/inf; the weights of the last good checkpoint are kept."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    total_steps: int
    tokens: int
    interrupted: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    signum: int | None = None
    """the signal that stopped an interrupted run (SIGINT 2, SIGTERM 15)"""
    precision: dict = field(default_factory=dict)
    """the resolved precision and the measured GEMM rates (``hardware.PrecisionChoice.to_dict()``)"""
    tokens_per_second: float = 0.0
    """training tokens per second of the optimizer steps of this session (validation and checkpoints excluded)"""
    mfu: float | None = None
    """model-FLOP utilisation of those steps against the measured GEMM rate of the precision used"""

    @property
    def exit_code(self) -> int:
        """What the CLI exits with: 0, or 128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""
        return 128 + (self.signum or signal.SIGINT) if self.interrupted else 0

    def stop_if_interrupted(self) -> None:
        """Raise the signal that stopped the run (its checkpoint is written) for callers that chain runs."""
        if self.interrupted:
            raise Terminated(self.signum) if self.signum == signal.SIGTERM else KeyboardInterrupt


class _StopRequest(contextlib.AbstractContextManager):
    """SIGINT/SIGTERM set a flag: the loop checkpoints after the current step and returns. A second signal stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, _frame) -> None:
        if self.requested:
            raise Terminated(signum) if signum == signal.SIGTERM else KeyboardInterrupt
        self.signum = signum
        logger.warning("%s received: saving a checkpoint after this step (send again to stop now)",
                       signal.Signals(signum).name)
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class _Throughput:
    """Tokens per second and MFU of the optimizer steps of this session (validation and checkpoints excluded)."""

    def __init__(self, s: TrainSetup) -> None:
        self.s, self.seconds, self.tokens = s, 0.0, 0

    def add(self, seconds: float) -> float:
        self.seconds, self.tokens = self.seconds + seconds, self.tokens + self.s.tokens_per_step
        return self.s.tokens_per_step / seconds

    def result(self) -> dict:
        rate = self.tokens / self.seconds if self.seconds else 0.0
        peak = self.s.peak
        return {"precision": self.s.choice.to_dict(), "tokens_per_second": rate,
                "mfu": mfu(self.s.flops_per_token, rate, peak) if peak and rate else None}


def _step_metrics(s: TrainSetup, sums: StepSums, lr: float, grad_norm: float, done: int, rate: float) -> dict:
    """The metrics.jsonl row of optimizer step ``done`` (sums over all processes and micro-batches)."""
    metrics = {"loss": sums.loss.item(), "lr": lr, "grad_norm": grad_norm, "tokens": done * s.tokens_per_step,
               "tok_per_s": rate}
    if s.peak:
        metrics["mfu"] = mfu(s.flops_per_token, rate, s.peak)
    if s.distilling:
        metrics["kd"] = sums.kd.item() / s.tokens_per_step
    if s.loss.clm_weight:
        metrics["lm_loss"] = sums.clm.item() / (s.args.batch_size * (s.seq_len - 1))
    if s.uses_intermediate:
        metrics.update(is_loss=sums.intermediate.item() / s.tokens_per_step,
                       alpha=sums.alpha.item() / s.sampler.accumulation / s.info.world_size)
    return metrics


def _optimizer_step(s: TrainSetup, step: int) -> tuple[StepSums, float, float]:
    """One optimizer step at ``step`` (0-based): returns the step sums, the learning rate and the gradient norm.

    Nothing is applied when the loss or the gradient norm is not finite: the run stops with
    :class:`TrainingDiverged`, and the newest checkpoint holds the last good weights.
    """
    lr = lr_at(step, s.total_steps, s.args)
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    sums = loss_step(s, step)
    clip = s.args.grad_clip if s.args.grad_clip > 0 else math.inf
    grad_norm = norm_value(torch.nn.utils.clip_grad_norm_(s.params, clip))  # DTensor params under FSDP
    if not (math.isfinite(sums.loss.item()) and math.isfinite(grad_norm)):
        good = latest_checkpoint(s.run_dir)
        raise TrainingDiverged(
            f"Training diverged at step {step + 1}: loss {sums.loss.item()}, gradient norm {grad_norm}. "
            f"No update was applied; the last good checkpoint is {good or 'none (no checkpoint yet)'}. "
            f"Lower --lr or use --precision fp32, then --resume.")
    s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    return sums, lr, grad_norm


def _loop(s: TrainSetup, on_step: Callable[[int], None] | None) -> TrainResult:
    """Steps ``start_step .. total_steps`` with validation and checkpoints on schedule; a signal stops after a step."""
    args, total = s.args, s.total_steps
    t0, last, speed = time.time(), {}, _Throughput(s)
    saved_step = s.start_step if s.start_step else -1
    with _StopRequest() as stop, progress(total=total * s.tokens_per_step, initial=s.start_step * s.tokens_per_step,
                                          unit="tok", unit_scale=True,
                                          desc="distill" if s.distilling else "finetune") as bar:
        if s.start_step == 0:
            last.update(validate(s, 0))
        for step in range(s.start_step, total):
            t_step = time.time()
            sums, lr, grad_norm = _optimizer_step(s, step)
            done = step + 1
            last = _step_metrics(s, sums, lr, grad_norm, done, speed.add(time.time() - t_step))
            s.log(last, done)
            bar.update(s.tokens_per_step)
            bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{lr:.2e}")
            stop_now = all_reduce_sum(torch.tensor([float(stop.requested)], device=s.device), s.info).item() > 0
            if s.heldout is not None and ((args.val_every and done % args.val_every == 0) or done == total):
                last.update(validate(s, done))
            if stop_now or done == total or (args.checkpoint_every and done % args.checkpoint_every == 0):
                checkpoint(s, done, t0)
                saved_step = done
            if on_step is not None:
                on_step(done)
            if stop_now:
                logger.warning("stopped at step %d of %d; resume with --resume", done, total)
                return TrainResult(s.run_dir, done, total, done * s.tokens_per_step, interrupted=True, metrics=last,
                                   signum=stop.signum, **speed.result())
        if saved_step != total:
            checkpoint(s, total, t0)
    return TrainResult(s.run_dir, total, total, total * s.tokens_per_step, metrics=last, **speed.result())


def train(student: nn.Module, train_blocks: torch.Tensor, out_dir: str | Path, *, teacher: nn.Module | None = None,
          tokenizer=None, heldout: torch.Tensor | None = None, loss: LossArgs | None = None,
          args: TrainArgs | None = None, student_dir: str | Path | None = None, resume: bool = False,
          overwrite: bool = False, provenance: dict | None = None,
          on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Train ``student`` on ``train_blocks`` (N, T) and export it to ``out_dir``.

    With a ``teacher`` this is knowledge distillation (``docs/method.md`` §4); without, plain
    next-token fine-tuning. ``student_dir`` is where the student came from: its
    ``prune_plan.json`` gives the layer matching and is copied into the export. ``resume``
    continues from the newest checkpoint in ``out_dir/checkpoints`` bit-identically.
    ``on_step(step)`` runs after each step. The student is trained in place (moved to the
    device); the teacher is only borrowed: its dtype is never changed (``teacher_dtype`` other
    than its own runs a converted copy), and its device, eval mode and ``requires_grad`` flags
    are restored on return, also when the run raises (see :mod:`compactlm.distill.teacher`).
    """
    loss, args = loss or LossArgs(), args or TrainArgs()
    with setup(student, train_blocks, Path(out_dir), teacher=teacher, loss=loss, args=args, tokenizer=tokenizer,
               heldout=heldout, student_dir=student_dir, resume=resume, overwrite=overwrite,
               provenance=provenance) as s:
        try:
            result = _loop(s, on_step)
        except RuntimeError as err:
            if not peer_lost(err, s.info):
                raise
            newest = latest_checkpoint(s.run_dir)
            raise CompactLMError(
                f"rank {s.info.rank} of {s.info.world_size}: another process of this job stopped "
                f"({clip(str(err).strip().splitlines()[0], 160)}); the newest complete checkpoint is "
                f"{newest.name if newest else 'none'}. Restart the whole job with the same command plus --resume.") from err
        s.hand_back()
        if not result.interrupted:
            model = s.export_model()  # under FSDP: gathered on rank 0, a collective
            if s.info.is_main:
                publish_export(s.run_dir, functools.partial(s.export, model=model))
                s.say("exported the student to %s", s.run_dir)
            barrier(s.info)
    return result


def distill(student: nn.Module, teacher: nn.Module, train_blocks: torch.Tensor, out_dir: str | Path, **kwargs) -> TrainResult:
    """Knowledge distillation of ``student`` from ``teacher`` (see :func:`train` for the options)."""
    return train(student, train_blocks, out_dir, teacher=teacher, **kwargs)


def finetune(model: nn.Module, train_blocks: torch.Tensor, out_dir: str | Path, *, loss: LossArgs | None = None,
             **kwargs) -> TrainResult:
    """Plain next-token fine-tuning ("teacher correction", docs/method.md §4) with the same trainer."""
    loss = loss or LossArgs(clm_weight=1.0, intermediate="off")
    return train(model, train_blocks, out_dir, teacher=None, loss=loss, **kwargs)
