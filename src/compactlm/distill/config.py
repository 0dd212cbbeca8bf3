"""Options of a distillation or fine-tuning run, grouped in dataclasses.

Each field's docstring is its CLI help (see :func:`field_help`), litgpt style: one place
defines an option, its default and its documentation.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import re
from dataclasses import dataclass

from ..errors import CompactLMError


@dataclass
class LossArgs:
    """What the student learns from."""

    loss: str = "forward_kl"
    """logit loss: forward_kl (KL(teacher||student), the paper's best), reverse_kl, js, mse, cosine"""
    temperature: float = 1.0
    """softmax temperature τ of the logit loss (the loss is multiplied by τ²)"""
    top_k: int | None = None
    """use only the teacher's K largest logits (forward_kl only; the paper finds K <= 100 hurts)"""
    js_beta: float = 0.5
    """β of the Jensen–Shannon loss"""
    clm_weight: float = 0.0
    """weight of the student's next-token cross-entropy added to the logit loss (paper: 0)"""
    chunk_size: int = 512
    """tokens per chunk of LM head + loss, bounding the fp32 (tokens x vocab) memory; 0 = no chunking"""
    intermediate: str = "auto"
    """intermediate-state loss: auto (on when the student has fewer layers than the teacher), on, off"""
    layer_map: list[int] | None = None
    """teacher layer index of every student layer (default: prune_plan.json kept.layers)"""


@dataclass
class TrainArgs:
    """How the student is optimised; defaults follow METHOD.md §4, scaled to short runs."""

    lr: float = 1e-4
    """peak learning rate (AdamW, cosine schedule)"""
    min_lr: float = 1e-5
    """learning rate at the end of the cosine decay"""
    warmup_steps: int | None = None
    """linear warm-up steps (default: min(40, 10% of the steps))"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    batch_size: int = 8
    """global batch in sequences per optimizer step (all processes, all accumulation steps)"""
    micro_batch_size: int = 4
    """sequences per forward/backward on one process; gradient accumulation makes up the rest"""
    max_steps: int | None = None
    """optimizer steps (default: one pass over the training blocks)"""
    grad_clip: float = 1.0
    """clip the global gradient norm to this value (0 = off)"""
    precision: str = "auto"
    """auto (bf16 where the device runs it natively and a micro-benchmark of this model's GEMMs finds it faster,
    else fp32), bf16 (autocast, fp32 master weights) or fp32"""
    teacher_dtype: str = "auto"
    """teacher weights: bf16, fp32 or auto (bf16 when the training precision is bf16)"""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto (the local rank's GPU if any)"""
    seed: int = 0
    """seed of the data order and of any random initialisation"""
    val_every: int = 50
    """validate on the held-out blocks every N steps (and at start and end; 0 = start and end only)"""
    checkpoint_every: int = 50
    """write a checkpoint every N steps (and on SIGINT/SIGTERM; 0 = only then and at the end)"""
    keep_checkpoints: int = 2
    """number of newest checkpoints kept"""
    export_checkpoints: bool = False
    """also write a loadable Hugging Face export inside every checkpoint"""
    log_to: str = ""
    """extra metric loggers besides metrics.jsonl: tensorboard, wandb (comma-separated)"""

    def warmup(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return max(1, min(40, total_steps // 10))


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


def field_help(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (``ast`` of its source)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(following, ast.Expr) \
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
            docs[node.target.id] = following.value.value.strip()
    return docs


def as_dict(*groups) -> dict:
    return {k: v for g in groups for k, v in dataclasses.asdict(g).items()}


MAX_TOKENS = 10**13   # 10T: beyond any distillation budget; larger numbers are typos (1e30)


def parse_tokens(text: str) -> int:
    """``2M``, ``400K``, ``1.5e6`` or ``2000000`` → an int token count."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kKmMbBgG]?)\s*", str(text))
    if not match:
        raise CompactLMError(f"--tokens '{str(text)[:40]}' is not a token count; expected e.g. 400K, 2M, 1.5e6 or 2000000.")
    scale = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}[match.group(2).lower()]
    count = float(match.group(1)) * scale
    if count > MAX_TOKENS:
        raise CompactLMError(f"--tokens '{text}' is {count:.3g} tokens, more than the {MAX_TOKENS:.0e} compactlm "
                             f"accepts; expected e.g. 400K, 2M or 1B.")
    return int(count)
