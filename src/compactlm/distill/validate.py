"""Every user mistake a training run can see before heavy work, raised once; and the data fingerprint."""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

from ..errors import CompactLMError
from ..parallel import DistInfo
from .config import LossArgs, TrainArgs


def check_training(train_blocks: torch.Tensor, heldout: torch.Tensor | None, teacher: nn.Module | None, student: nn.Module,
           loss: LossArgs, args: TrainArgs, info: DistInfo) -> None:
    """Every user mistake we can see before heavy work, raised once."""
    problems = []
    if train_blocks.ndim != 2 or train_blocks.dtype != torch.long:
        problems.append(f"training blocks must be a (N, seq_len) int64 tensor; "
                        f"got {tuple(train_blocks.shape)} {train_blocks.dtype}")
    per_process = args.batch_size // max(1, info.world_size)
    if args.batch_size % (info.world_size * args.micro_batch_size):
        problems.append(f"--batch-size {args.batch_size} must be a multiple of processes ({info.world_size}) x "
                        f"--micro-batch-size ({args.micro_batch_size})")
    if args.max_steps is None and train_blocks.shape[0] < args.batch_size:
        problems.append(f"only {train_blocks.shape[0]} training blocks for a batch of {args.batch_size}; "
                        f"raise --tokens or lower --batch-size")
    if heldout is not None and heldout.shape[0] < info.world_size:
        problems.append(f"{heldout.shape[0]} held-out blocks cannot be split over {info.world_size} processes")
    if teacher is not None and teacher.config.vocab_size != student.config.vocab_size:
        problems.append(f"teacher vocabulary {teacher.config.vocab_size} != student vocabulary {student.config.vocab_size}; "
                        f"distillation needs the same tokenizer")
    if teacher is None and loss.clm_weight <= 0:
        problems.append("without a teacher the only loss is the LM loss: --clm-weight must be > 0")
    if args.precision not in ("auto", "bf16", "fp32") or args.teacher_dtype not in ("auto", "bf16", "fp32"):
        problems.append(f"--precision must be auto|bf16|fp32 and --teacher-dtype auto|bf16|fp32; "
                        f"got {args.precision}, {args.teacher_dtype}")
    if loss.intermediate not in ("auto", "on", "off"):
        problems.append(f"--intermediate must be auto, on or off; got '{loss.intermediate}'")
    if per_process < 1 or not 0 < args.lr < math.inf or not 0 <= args.min_lr <= args.lr:
        problems.append(f"need batch >= processes and 0 <= min_lr <= lr (finite); got batch {args.batch_size}, "
                        f"lr {args.lr}, min_lr {args.min_lr}")
    for name, value in (("--grad-clip", args.grad_clip), ("--weight-decay", args.weight_decay),
                        ("--temperature", loss.temperature), ("--clm-weight", loss.clm_weight), ("--js-beta", loss.js_beta)):
        if not 0 <= value < math.inf or (name == "--temperature" and value == 0):
            problems.append(f"{name} must be a finite number >= 0{' (> 0)' if name == '--temperature' else ''}; got {value}")
    for name, value, low in (("--micro-batch-size", args.micro_batch_size, 1), ("--checkpoint-every", args.checkpoint_every, 0),
                             ("--keep-checkpoints", args.keep_checkpoints, 1), ("--val-every", args.val_every, 0),
                             ("--warmup-steps", args.warmup_steps, 0), ("--max-steps", args.max_steps, 1),
                             ("--chunk-size", loss.chunk_size, 0), ("--top-k", loss.top_k, 1)):
        if value is not None and value < low:
            problems.append(f"{name} must be >= {low}; got {value}")
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
