"""Every user mistake a training run can see before heavy work, raised once; and the data fingerprint."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from ..errors import CompactLMError
from ..parallel import DistInfo
from .config import LossArgs, TrainArgs


def check_training(train_blocks: torch.Tensor, heldout: torch.Tensor | None, teacher: nn.Module | None,
                   student: nn.Module, loss: LossArgs, args: TrainArgs, info: DistInfo) -> None:
    """What no single option's type can see, raised once before heavy work: how options, data, models and processes
    fit together. (Each value alone is validated by its type in :mod:`compactlm.config`.) Options are named by their
    key, with the ``compactlm distill`` flag in parentheses."""
    problems = []
    if train_blocks.ndim != 2 or train_blocks.dtype != torch.long:
        problems.append(f"training blocks must be a (N, seq_len) int64 tensor; "
                        f"got {tuple(train_blocks.shape)} {train_blocks.dtype}")
    if args.batch_size % (info.world_size * args.micro_batch_size):
        problems.append(f"batch_size (--batch-size) {args.batch_size} must be a multiple of processes "
                        f"({info.world_size}) x micro_batch_size (--micro-batch-size) {args.micro_batch_size}")
    if args.max_steps is None and train_blocks.shape[0] < args.batch_size:
        problems.append(f"only {train_blocks.shape[0]} training blocks for a batch of {args.batch_size}; "
                        f"raise the tokens (--tokens) or lower batch_size (--batch-size)")
    if heldout is not None and heldout.shape[0] < info.world_size:
        problems.append(f"{heldout.shape[0]} held-out blocks cannot be split over {info.world_size} processes")
    if teacher is not None and teacher.config.vocab_size != student.config.vocab_size:
        problems.append(f"teacher vocabulary {teacher.config.vocab_size} != student vocabulary {student.config.vocab_size}; "
                        f"distillation needs the same tokenizer")
    if teacher is None and loss.clm_weight <= 0:
        problems.append("without a teacher the only loss is the LM loss: clm_weight (--clm-weight) must be > 0")
    if args.min_lr > args.lr:
        problems.append(f"min_lr (--min-lr) {args.min_lr} is above lr (--lr) {args.lr}; expected min_lr <= lr")
    if train_blocks.numel():
        for role, model in (("student", student), ("teacher", teacher)):
            if model is not None:
                problems += check_blocks_fit(train_blocks, model.config, role)
    if problems:
        raise CompactLMError("Cannot start training: " + "; ".join(problems) + ".")


def position_problems(seq_len: int, config, role: str = "model") -> list[str]:
    """Sequences longer than the model's positions: checked before any text is read."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit and seq_len > limit:
        return [f"--seq-len {seq_len} is longer than the {role}'s {limit} positions (max_position_embeddings); "
                f"lower --seq-len"]
    return []


def check_blocks_fit(blocks: torch.Tensor, config, role: str = "model") -> list[str]:
    """Problems with feeding (N, T) token ``blocks`` to a model: ids beyond its vocabulary, T beyond its positions."""
    problems = position_problems(blocks.shape[-1], config, role)
    if blocks.numel() and (int(blocks.max()) >= config.vocab_size or int(blocks.min()) < 0):
        problems.append(f"the data has token id {int(blocks.max())}, but the {role} has a vocabulary of "
                        f"{config.vocab_size}; tokenize with the {role}'s own tokenizer")
    return problems


def blocks_fingerprint(*blocks: torch.Tensor | None) -> str:
    """A short hash of the token blocks, so that a resume with other data is refused."""
    h = hashlib.sha256()
    for b in blocks:
        if b is not None:
            h.update(str(tuple(b.shape)).encode())
            h.update(b.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
