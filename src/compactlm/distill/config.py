"""The learning-rate schedule and the step arithmetic of a distillation or fine-tuning run.

The options themselves (:class:`LossArgs`, :class:`TrainArgs`) live with every other option in
:mod:`compactlm.config`; they are re-exported here for ``from compactlm.distill import ...``.
"""

from __future__ import annotations

import dataclasses
import math

from ..config import MAX_TOKENS, LossArgs, TrainArgs, parse_tokens

__all__ = ["MAX_TOKENS", "LossArgs", "TrainArgs", "as_dict", "lr_at", "parse_tokens", "steps_for_tokens"]


def steps_for_tokens(tokens: int, batch_size: int, seq_len: int) -> int:
    """Optimizer steps that consume ``tokens`` at ``batch_size`` sequences of ``seq_len`` (at least one)."""
    return max(1, tokens // (batch_size * seq_len))


def lr_at(step: int, total_steps: int, args: TrainArgs) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr`` at ``total_steps``."""
    warmup = args.warmup(total_steps)
    if step < warmup:
        return args.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1.0 + math.cos(math.pi * progress))


def as_dict(*groups) -> dict:
    """The fields of several option objects in one flat mapping (the settings recorded in checkpoints)."""
    return {k: v for g in groups for k, v in dataclasses.asdict(g).items()}
