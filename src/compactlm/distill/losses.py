"""Logit losses for distillation, registered by name, and their chunked evaluation.

Every loss compares student and teacher logits of the same tokens and returns one value per
token; the caller takes the masked mean. Shapes: ``student`` and ``teacher`` are ``(N, V)``
float32 logits of N tokens over a vocabulary of V; the result is ``(N,)``.

Memory: a (tokens x vocabulary) float32 tensor is large (8 x 512 tokens x 49,152 x 4 bytes =
0.8 GB, and softmax needs several). :class:`ChunkedLogitLoss` therefore never builds full
logits. It takes the *final hidden states* of both models and applies each LM head to
``chunk_size`` tokens at a time; for the student it computes the gradient of each chunk
right away (w.r.t. the hidden states and the head weight) and keeps only those, so autograd
holds ``(N, hidden)`` instead of ``(N, V)``. Backward then only scales the stored gradients.
The arithmetic equals the plain computation (tested, gradients included), at the cost of
no extra matmuls: forward does logits, grad-hidden and grad-weight once per chunk, exactly
what plain autograd would do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import LogitTransform
from ..errors import CompactLMError, unknown_name

IGNORE_INDEX = -100


class LogitLoss(nn.Module):
    """Base class: ``forward(student (N, V), teacher (N, V)) -> (N,)`` per-token loss."""

    supports_top_k = False

    def __init__(self, temperature: float = 1.0, top_k: int | None = None, beta: float = 0.5) -> None:
        super().__init__()
        self.temperature = temperature
        self.top_k = top_k
        self.beta = beta


LOSSES: dict[str, type[LogitLoss]] = {}


def register_loss(name: str) -> Callable[[type[LogitLoss]], type[LogitLoss]]:
    def wrap(cls: type[LogitLoss]) -> type[LogitLoss]:
        LOSSES[name] = cls
        return cls

    return wrap


@register_loss("forward_kl")
class ForwardKL(LogitLoss):
    """KL(p_teacher || p_student) at temperature τ, times τ² (keeps gradient scale across τ).

    With ``top_k`` the teacher distribution is the softmax over its K largest logits (zero
    elsewhere) and the student's full-vocabulary log-probabilities are read at those K ids.
    """

    supports_top_k = True

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        tau = self.temperature
        s, t = (student / tau, teacher / tau) if tau != 1 else (student, teacher)
        lse_s = torch.logsumexp(s, dim=-1)                                # (N,)
        if self.top_k:
            t, ids = t.topk(self.top_k, dim=-1)                           # (N, K)
            s = s.gather(-1, ids)                                         # (N, K)
        # KL = Σ p·(log p − log q) = Σ p·(t − s) − lse(t) + lse(s), with p = softmax(t): fewer
        # (N, V) temporaries than two log-softmaxes; the gradient w.r.t. s is softmax(s) − p.
        with torch.no_grad():
            p = torch.softmax(t, dim=-1)
            teacher_part = (p * t).sum(-1) - torch.logsumexp(t, dim=-1)   # Σ p log p  (N,)
        return (teacher_part - (p * s).sum(-1) + lse_s) * tau**2


@register_loss("reverse_kl")
class ReverseKL(LogitLoss):
    """KL(p_student || p_teacher) at temperature τ, times τ² (mode-seeking)."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        tau = self.temperature
        log_q = F.log_softmax(student / tau, dim=-1)
        log_p = F.log_softmax(teacher / tau, dim=-1)
        return (log_q.exp() * (log_q - log_p)).sum(-1) * tau**2


@register_loss("js")
class JensenShannon(LogitLoss):
    """Generalised Jensen–Shannon: β·KL(p‖m) + (1−β)·KL(q‖m), m = β·p + (1−β)·q, p teacher, q student."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        tau, beta = self.temperature, self.beta
        log_q = F.log_softmax(student / tau, dim=-1)
        log_p = F.log_softmax(teacher / tau, dim=-1)
        log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), dim=0)
        kl_pm = (log_p.exp() * (log_p - log_m)).sum(-1)
        kl_qm = (log_q.exp() * (log_q - log_m)).sum(-1)
        return (beta * kl_pm + (1 - beta) * kl_qm) * tau**2


@register_loss("mse")
class LogitMSE(LogitLoss):
    """Mean over the vocabulary of the squared logit difference."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return (student - teacher).pow(2).mean(-1)


@register_loss("cosine")
class LogitCosine(LogitLoss):
    """1 − cosine similarity of the two logit vectors."""

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return 1.0 - F.cosine_similarity(student, teacher, dim=-1)


def make_loss(name: str, temperature: float = 1.0, top_k: int | None = None, beta: float = 0.5) -> LogitLoss:
    """Build a registered logit loss; raises a user error on an unknown name or bad option."""
    if name not in LOSSES:
        raise unknown_name("loss", name, LOSSES)
    if temperature <= 0:
        raise CompactLMError(f"Temperature must be > 0; got {temperature}.")
    if top_k is not None and (top_k < 1 or not LOSSES[name].supports_top_k):
        raise CompactLMError(
            f"--top-k {top_k} is not valid with loss '{name}': top-K teacher logits need a positive K and "
            f"are defined for: {', '.join(n for n, c in LOSSES.items() if c.supports_top_k)}."
        )
    if not 0.0 < beta < 1.0:
        raise CompactLMError(f"JS beta must be in (0, 1); got {beta}.")
    return LOSSES[name](temperature=temperature, top_k=top_k, beta=beta)


@dataclass
class LossTerms:
    """Result of one loss evaluation: ``total`` carries gradients; the rest are detached sums."""

    total: torch.Tensor   # kd_scale * kd_sum + clm_scale * clm_sum (scalar, differentiable)
    kd_sum: torch.Tensor  # sum over masked tokens of the logit loss (scalar)
    clm_sum: torch.Tensor  # sum over labelled tokens of the student's cross-entropy (scalar)


def _chunk_terms(logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor, mask: torch.Tensor,
                 loss_fn: LogitLoss | None, clm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    zero = logits.new_zeros(())
    kd = (loss_fn(logits, teacher_logits) * mask).sum() if loss_fn is not None else zero
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum") if clm else zero
    return kd, ce


def _head_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 transform: LogitTransform | None = None) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # at least fp32 for softmax
    return logits if transform is None or transform.identity else transform(logits)


class _FusedHeadLoss(torch.autograd.Function):
    """LM head + loss per chunk, gradients computed in forward (see module docstring)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher_hidden, teacher_weight, teacher_bias, labels, mask, spec):
        need = [ctx.needs_input_grad[i] for i in range(3)]
        grads = [torch.zeros_like(t) if n else None for t, n in zip((hidden, weight, bias), need)]
        # One leaf per weight for the whole loop: autocast caches its low-precision copy once.
        w = weight.detach().requires_grad_(need[1])
        b = bias.detach().requires_grad_(need[2]) if bias is not None else None
        acc = torch.promote_types(hidden.dtype, torch.float32)
        kd_sum, clm_sum = hidden.new_zeros((), dtype=acc), hidden.new_zeros((), dtype=acc)
        for start in range(0, hidden.shape[0], spec.chunk_size):
            sl = slice(start, start + spec.chunk_size)
            with torch.enable_grad():
                h = hidden[sl].detach().requires_grad_(need[0])
                t_logits = None
                if teacher_hidden is not None:
                    with torch.no_grad():
                        t_logits = _head_logits(teacher_hidden[sl], teacher_weight, teacher_bias,
                                                spec.teacher_transform)
                kd, ce = _chunk_terms(_head_logits(h, w, b, spec.transform), t_logits, labels[sl], mask[sl],
                                      spec.loss_fn, spec.clm)
                total = spec.kd_scale * kd + spec.clm_scale * ce
            inputs = [t for t, n in zip((h, w, b), need) if n]
            if inputs:
                chunk_grads = iter(torch.autograd.grad(total, inputs))
                for i, n in enumerate(need):
                    if n:
                        g = next(chunk_grads)
                        if i == 0:
                            grads[0][sl] = g
                        else:
                            grads[i] += g
            kd_sum += kd.detach()
            clm_sum += ce.detach()
        ctx.save_for_backward(*[g if g is not None else torch.empty(0) for g in grads])
        ctx.has = need
        ctx.mark_non_differentiable(kd_sum, clm_sum)
        return spec.kd_scale * kd_sum + spec.clm_scale * clm_sum, kd_sum, clm_sum

    @staticmethod
    def backward(ctx, grad_total, _grad_kd, _grad_clm):
        saved = ctx.saved_tensors
        out = [saved[i] * grad_total.to(saved[i].dtype) if ctx.has[i] else None for i in range(3)]
        return (*out, None, None, None, None, None, None)


@dataclass(frozen=True)
class _Spec:
    loss_fn: LogitLoss | None
    kd_scale: float
    clm_scale: float
    clm: bool
    chunk_size: int
    transform: LogitTransform | None = None
    teacher_transform: LogitTransform | None = None


class ChunkedLogitLoss(nn.Module):
    """Logit distillation (+ optional CLM term) from final hidden states, ``chunk_size`` tokens at a time.

    ``forward`` arguments (N = flattened tokens):
        hidden: ``(N, H_s)`` student final hidden states (after the final norm).
        head: the student's LM head (``nn.Linear``; tied heads are fine).
        teacher_hidden: ``(N, H_t)`` teacher final hidden states, or None (plain LM loss).
        teacher_head: the teacher's LM head, or None.
        labels: ``(N,)`` next-token ids, ``-100`` where there is none.
        mask: ``(N,)`` float, 1 for real tokens (the distillation term's mask).
        kd_scale, clm_scale: factors applied to the two sums (weight / token count), so
            ``total`` is already the normalised loss.
        transform, teacher_transform: the family's logit transform after each head (Granite's
            ``logits_scaling``, Gemma's soft-cap; :class:`compactlm.arch.LogitTransform`), or None.

    ``chunk_size=None`` computes everything at once with plain autograd (the reference).
    """

    def __init__(self, loss_fn: LogitLoss | None, chunk_size: int | None = 1024) -> None:
        super().__init__()
        self.loss_fn = loss_fn
        self.chunk_size = chunk_size

    def forward(self, hidden: torch.Tensor, head: nn.Linear, teacher_hidden: torch.Tensor | None,
                teacher_head: nn.Linear | None, labels: torch.Tensor, mask: torch.Tensor,
                kd_scale: float, clm_scale: float, transform: LogitTransform | None = None,
                teacher_transform: LogitTransform | None = None) -> LossTerms:
        loss_fn = self.loss_fn if teacher_hidden is not None and kd_scale != 0 else None
        clm = clm_scale != 0
        t_w = teacher_head.weight if teacher_head is not None else None
        t_b = teacher_head.bias if teacher_head is not None else None
        if self.chunk_size is None:
            t_logits = None
            if loss_fn is not None:
                with torch.no_grad():
                    t_logits = _head_logits(teacher_hidden, t_w, t_b, teacher_transform)
            kd, ce = _chunk_terms(_head_logits(hidden, head.weight, head.bias, transform), t_logits, labels, mask,
                                  loss_fn, clm)
            return LossTerms(kd_scale * kd + clm_scale * ce, kd.detach(), ce.detach())
        spec = _Spec(loss_fn, float(kd_scale), float(clm_scale), clm, self.chunk_size, transform, teacher_transform)
        weight, bias = head.weight, head.bias
        if not torch.is_grad_enabled():  # evaluation: no gradients to precompute
            hidden, weight = hidden.detach(), weight.detach()
            bias = bias.detach() if bias is not None else None
        total, kd, ce = _FusedHeadLoss.apply(hidden, weight, bias, teacher_hidden if loss_fn else None,
                                             t_w, t_b, labels, mask, spec)
        return LossTerms(total, kd, ce)
