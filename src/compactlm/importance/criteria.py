"""Width-importance criteria, registered by name: which heads, neurons and channels matter.

``activation`` (the default, docs/method.md §2) is the calibration pass's own statistics:
raw moments from hooks, so any batch x sequence aggregation can be chosen at prune time. The
others score each unit directly, one (L, I) / (L, H) / (E,) tensor per axis, stored in the
scores file as ``neurons.score``, ``heads.score`` and ``channels.score``:

* ``magnitude``: the L2 norm of all weights that belong to the unit (see :func:`unit_sums`);
  data-free.
* ``taylor``: first-order Taylor importance, ``sum over the unit's weights of |w * dL/dw|``,
  L = mean next-token loss over the calibration blocks: the first-order term of LLM-Pruner's
  element-wise importance, summed over the unit's group of weights (Ma et al., "LLM-Pruner:
  On the Structural Pruning of Large Language Models", NeurIPS 2023, arXiv 2305.11627, §3.2).
* ``random``: seeded uniform scores, the floor every criterion should beat.

A criterion is a function ``(model, data, CriterionOptions) -> UnitScores``; adding one is
one function plus one line in :data:`CRITERIA`. Layer (depth) metrics do not depend on the
criterion: every scores file carries Block Importance and the other layer metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist

from ..arch import adapter_for
from ..errors import CompactLMError, unknown_name
from ..parallel import DistInfo, all_reduce_sum, is_mine
from ..progress import progress
from .loss import batches, summed_loss


class UnitScores(NamedTuple):
    """One score per unit; higher = more important = kept."""

    neurons: torch.Tensor   # (L, I) MLP neurons of each layer
    heads: torch.Tensor     # (L, H) query heads of each layer
    channels: torch.Tensor  # (E,) hidden channels of the whole network


@dataclass(frozen=True)
class CriterionOptions:
    batch_size: int = 8          # blocks per forward/backward pass (taylor)
    seed: int = 0                # random
    bf16: bool = False           # bf16 autocast for the taylor forward
    show_progress: bool = True
    parallel: DistInfo | None = None   # under torchrun: taylor takes this process's batches, gradients are summed


def unit_sums(model, elem: Callable[[torch.Tensor], torch.Tensor]) -> UnitScores:
    """Sum ``elem(weight)`` (same shape as the weight) over each unit's weights, in float64.

    A neuron owns its ``gate_proj`` and ``up_proj`` rows (both halves of a fused ``gate_up_proj``;
    only ``up_proj`` in a non-gated MLP) and its ``down_proj`` column; a query
    head owns its ``q_proj`` rows and ``o_proj`` columns (k/v are shared by a KV group, so they
    are not a head's own); a hidden channel owns every column or row that reads or writes it:
    q/k/v/gate/up columns, o/down rows, embeddings and an untied LM head. Norm weights and
    biases are left out. Dense models only (:func:`check_criterion_for` refuses MoE models).
    """
    a = adapter_for(model.config)
    arch = a.architecture(model.config)
    H, d = arch.num_attention_heads, arch.head_dim
    neurons, heads = [], []
    channels = torch.zeros(arch.hidden_size, dtype=torch.float64)
    for layer in a.decoder_layers(model):
        def w(name: str) -> torch.Tensor:
            return elem(a.layer_module(layer, name).weight).detach().double().cpu()

        o, down = w(a.o_proj), w(a.down_proj)
        if a.qkv_proj:                      # fused [q | k | v] rows: a head owns its q rows
            reads = [w(a.qkv_proj)]
            q = reads[0][: H * d]
        else:
            reads = [w(a.q_proj), w(a.k_proj), w(a.v_proj)]
            q = reads[0]
        if a.gate_up_proj:                  # fused [gate | up] rows: a neuron owns row n and row I + n
            gate_up = w(a.gate_up_proj)
            reads.append(gate_up)
            width = gate_up.shape[0] // 2
            neuron_rows = gate_up[:width].sum(1) + gate_up[width:].sum(1)
        else:                               # gated (gate, up) or not (up only: Nemotron)
            mlp_in = [w(name) for name in (a.gate_proj, a.up_proj) if name]
            reads += mlp_in
            neuron_rows = sum(m.sum(1) for m in mlp_in)
        neurons.append(neuron_rows + down.sum(0))                                           # (I,)
        heads.append(q.view(H, d, -1).sum((1, 2)) + o.view(-1, H, d).sum((0, 2)))           # (H,)
        channels += sum(m.sum(0) for m in reads) + o.sum(1) + down.sum(1)
    embed, head = model.get_submodule(a.embed_tokens).weight, model.get_submodule(a.lm_head).weight
    channels += elem(embed).detach().double().cpu().sum(0)
    if head is not embed:
        channels += elem(head).detach().double().cpu().sum(0)
    return UnitScores(torch.stack(neurons), torch.stack(heads), channels)


def magnitude_scores(model, data=None, options: CriterionOptions = CriterionOptions()) -> UnitScores:
    """L2 norm of each unit's weights: ``sqrt(sum of w**2)`` over the weights :func:`unit_sums` assigns it."""
    return UnitScores(*(t.sqrt() for t in unit_sums(model, torch.square)))


def taylor_scores(model, data, options: CriterionOptions = CriterionOptions()) -> UnitScores:
    """First-order Taylor importance ``sum |w * dL/dw|`` per unit; L = mean next-token loss over ``data``.

    Gradients of every batch accumulate into one gradient of the summed loss, which is then
    divided by the number of real tokens: exactly the gradient of the mean loss. The model's
    ``requires_grad`` flags and any existing ``.grad`` are restored afterwards.

    With ``options.parallel`` each process runs the batches ``rank, rank + W, ...``; the float32
    gradients and token counts are summed over processes before scoring (equal to one process's
    to float32 rounding, ~1e-6 relative: the gradient terms are added in another order).
    """

    parallel = options.parallel
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    saved = [p.grad for p in params]
    tokens = 0
    try:
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        with torch.enable_grad():
            for b, (ids, mask) in enumerate(progress(batches(data, options.batch_size), desc="taylor",
                                                     disable=None if options.show_progress else True)):
                if not is_mine(b, parallel):
                    continue
                loss, n = summed_loss(model, ids, mask, options.bf16)
                loss.backward()
                tokens += n
        if parallel is not None and parallel.distributed:
            for p in params:
                if p.grad is None:   # a process with no batch (fewer batches than processes)
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            tokens = int(all_reduce_sum(torch.tensor([tokens], dtype=torch.float64, device=parallel.device),
                                        parallel).item())
        if tokens == 0:
            raise CompactLMError("The calibration data gave no tokens for the taylor criterion. "
                                 "Provide a non-empty --data source.")
        return unit_sums(model, lambda w: (w.detach().double() * w.grad.double()).abs() / tokens)
    finally:
        for p, flag, grad in zip(params, flags, saved):
            p.grad = grad
            p.requires_grad_(flag)


def random_scores(model, data=None, options: CriterionOptions = CriterionOptions()) -> UnitScores:
    """Uniform [0, 1) scores from ``torch.Generator().manual_seed(seed)``: neurons, then heads, then channels."""
    arch = adapter_for(model.config).architecture(model.config)
    g = torch.Generator().manual_seed(options.seed)
    return UnitScores(torch.rand(arch.num_hidden_layers, arch.intermediate_size, generator=g),
                      torch.rand(arch.num_hidden_layers, arch.num_attention_heads, generator=g),
                      torch.rand(arch.hidden_size, generator=g))


Criterion = Callable[..., UnitScores]

CRITERIA: dict[str, Criterion | None] = {
    "activation": None,            # the calibration pass's hook statistics (hooks.py), not a unit function
    "magnitude": magnitude_scores,
    "taylor": taylor_scores,
    "random": random_scores,
}


def check_criterion(name: str) -> str:
    """Return ``name`` if it is a registered criterion, else raise "Unknown criterion ..."."""
    if name not in CRITERIA:
        raise unknown_name("criterion", name, CRITERIA)
    return name


def check_criterion_for(name: str, config) -> None:
    """Raise unless criterion ``name`` can score a model of ``config``: only ``activation`` scores experts."""
    arch = adapter_for(config).architecture(config)
    if arch.is_moe and name != "activation":
        raise CompactLMError(
            f"Criterion '{name}' scores dense MLP neurons; this {config.model_type} model is a mixture of experts, "
            f"whose experts and expert neurons only the 'activation' criterion scores. Use --criterion activation.")
