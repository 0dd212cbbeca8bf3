"""What the loop does with a :class:`~compactlm.distill.setup.TrainSetup`: one step, validation, a checkpoint.

One optimizer step reads ``batch_size`` blocks (all processes together), split into
micro-batches of ``micro_batch_size``; each micro-batch runs the frozen teacher (no grad),
then the student and the chunked loss, and backpropagates ``loss / global token count``
so that accumulation and data parallelism give the gradient of the global-batch mean.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import astuple, dataclass, fields

import torch

from ..parallel import DistInfo, all_reduce_sum, barrier, gather_objects
from .checkpoint import save_checkpoint, save_sharded_checkpoint
from .losses import IGNORE_INDEX, ChunkedLogitLoss
from .sampler import rng_state
from .setup import TrainSetup
from .sharding import no_sync, save_shards
from .student import DistillOutput


def next_token_labels(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token labels (B, T) with -100 at the last position, and the (B, T) token mask (packed blocks: all real)."""
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, :-1] = ids[:, 1:]
    return labels, torch.ones(ids.shape, dtype=torch.float32, device=ids.device)


@dataclass
class StepSums:
    """Float64 scalar sums over the micro-batches of one step (and over processes after :meth:`all_reduce`)."""

    loss: torch.Tensor          # the normalised loss: the global-batch mean once summed over processes
    kd: torch.Tensor            # logit loss summed over tokens
    clm: torch.Tensor           # student cross-entropy summed over labelled tokens
    intermediate: torch.Tensor  # intermediate-state loss summed over tokens (0 when off)
    alpha: torch.Tensor         # α summed over micro-batches and processes (0 when off)

    @classmethod
    def zeros(cls, device: torch.device) -> StepSums:
        return cls(*torch.zeros(len(fields(cls)), dtype=torch.float64, device=device).unbind())

    def add(self, out: DistillOutput) -> None:
        zero = out.loss.new_zeros(())
        parts = (out.loss.detach(), out.kd_sum, out.clm_sum, out.is_sum if out.is_sum is not None else zero,
                 out.alpha if out.alpha is not None else zero)
        for f, value in zip(fields(self), parts):
            setattr(self, f.name, getattr(self, f.name) + value.double())

    def all_reduce(self, info: DistInfo) -> StepSums:
        """The sums over every process (one collective); itself for one process."""
        return StepSums(*all_reduce_sum(torch.stack(astuple(self)), info).unbind())


def loss_step(s: TrainSetup, step: int) -> StepSums:
    """Forward and backward of this process's micro-batches of ``step``; returns the sums over all processes."""
    sums = StepSums.zeros(s.device)
    accumulation = s.sampler.accumulation
    for micro in range(accumulation):
        ids = s.train_blocks[s.sampler.indices(step, micro)].to(s.device)   # (micro, T)
        labels, mask = next_token_labels(ids)
        with no_sync(s.model, micro == accumulation - 1):
            with s.amp():
                teacher = s.teacher(ids) if s.teacher is not None else None
                out = s.model(ids, labels, mask, teacher, kd_scale=s.kd_scale, clm_scale=s.clm_scale)
            # DDP averages gradients over processes; the loss is already a share of the global mean.
            (out.loss * s.info.world_size).backward()
        sums.add(out)
    return sums.all_reduce(s.info)


@torch.no_grad()
def validate(s: TrainSetup, step: int) -> dict[str, float]:
    """Held-out KD loss and student perplexity (and the teacher's, at step 0); every process does its share."""
    if s.heldout is None:
        return {}
    rows, micro = s.heldout[s.info.rank::s.info.world_size], s.args.micro_batch_size
    totals = dict.fromkeys(("kd", "clm", "kd_tokens", "clm_tokens", "teacher_clm"), 0.0)
    teacher_loss = ChunkedLogitLoss(None, s.loss.chunk_size or None)
    # Sharded forwards are collectives: under FSDP every process runs as many as rank 0 (which has the most rows).
    batches = math.ceil(math.ceil(s.heldout.shape[0] / s.info.world_size) / micro) if s.strategy == "fsdp" else \
        math.ceil(rows.shape[0] / micro)
    s.module.eval()
    with s.amp():
        for start in range(0, batches * micro, micro):
            ids = (rows[start:start + micro] if start < rows.shape[0] else s.heldout[:1]).to(s.device)  # (micro, T)
            labels, mask = next_token_labels(ids)
            teacher = s.teacher(ids) if s.teacher is not None else None
            out = s.module(ids, labels, mask, teacher, kd_scale=1.0 if teacher is not None else 0.0, clm_scale=1.0)
            if start >= rows.shape[0]:
                continue   # a padding forward: counted nowhere
            totals["kd"] += float(out.kd_sum)
            totals["clm"] += float(out.clm_sum)
            totals["kd_tokens"] += mask.sum().item()
            totals["clm_tokens"] += (labels != IGNORE_INDEX).sum().item()
            if teacher is not None and step == 0:
                totals["teacher_clm"] += float(teacher_loss(teacher.hidden.flatten(0, 1), teacher.head, None, None,
                                                            labels.flatten(), mask.flatten(), 0.0, 1.0,
                                                            teacher.transform).clm_sum)
    s.module.train()
    sums = torch.tensor(list(totals.values()), dtype=torch.float64, device=s.device)
    kd, clm, n_kd, n_clm, t_clm = all_reduce_sum(sums, s.info).tolist()
    metrics = {"val_lm_loss": clm / n_clm, "val_ppl": math.exp(min(clm / n_clm, 50.0))}
    if s.distilling:
        metrics["val_kd"] = kd / n_kd
        if step == 0:
            metrics["teacher_val_ppl"] = math.exp(min(t_clm / n_clm, 50.0))
    s.log(metrics, step)
    s.say("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return metrics


def checkpoint(s: TrainSetup, step: int, session_start: float) -> None:
    """Write ``checkpoints/step-<step>`` (rank 0) with every process's RNG state; a collective: all processes call it.

    ``session_start`` is the ``time.time()`` at which this session's loop began: the
    checkpoint records the training seconds of all sessions so far.
    """
    rngs = gather_objects(rng_state(), s.info)
    state = {"settings": s.settings, "tokens": step * s.tokens_per_step,
             "elapsed_s": s.elapsed + time.time() - session_start}
    if s.strategy == "fsdp":   # every process writes its shards
        student = s.export_model() if s.args.export_checkpoints else None   # a collective
        path = save_sharded_checkpoint(s.run_dir, step, state=state, rng=rngs, keep=s.args.keep_checkpoints,
                                       write_shards=functools.partial(save_shards, module=s.module,
                                                                      optimizer=s.optimizer),
                                       info=s.info, export=functools.partial(s.export, model=student)
                                       if student is not None else None)
        s.say("checkpoint %s", path)
    elif s.info.is_main:
        path = save_checkpoint(s.run_dir, step, modules=s.trainable, optimizer=s.optimizer, state=state, rng=rngs,
                               keep=s.args.keep_checkpoints, export=s.export if s.args.export_checkpoints else None)
        s.say("checkpoint %s", path)
    barrier(s.info)
