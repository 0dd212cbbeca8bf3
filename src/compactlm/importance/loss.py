"""Calibration batches and the LM loss over them, shared by the importance pass and its metrics."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from ..hardware import autocast
from ..parallel import DistInfo, gather_shares, is_mine

Batch = torch.Tensor | dict[str, torch.Tensor]


def batches(data: torch.Tensor | Iterable[Batch], batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield (input_ids (B, S), attention_mask (B, S) or None) from blocks or ready batches."""
    if isinstance(data, torch.Tensor):
        for start in range(0, data.shape[0], batch_size):
            yield data[start:start + batch_size], None
        return
    for item in data:
        if isinstance(item, dict):
            yield item["input_ids"], item.get("attention_mask")
        else:
            yield item, None


def summed_loss(model, ids: torch.Tensor, mask: torch.Tensor | None, bf16: bool = False) -> tuple[torch.Tensor, int]:
    """(sum of next-token cross-entropy over real tokens (nats, a 0-dim tensor), number of those tokens)."""
    device = next(model.parameters()).device
    ids = ids.to(device)
    mask = None if mask is None else mask.to(device)
    with autocast(device, bf16):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    labels = ids[:, 1:].clone()
    if mask is not None:
        labels[mask[:, 1:] == 0] = -100
    loss = F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)).flatten(0, 1), labels.flatten(),
                           ignore_index=-100, reduction="sum")
    return loss, int((labels != -100).sum())


@torch.inference_mode()
def lm_loss(model, data, batch_size: int = 8, bf16: bool = False, parallel: DistInfo | None = None) -> float:
    """Mean next-token cross-entropy over real tokens (nats); ``bf16`` runs the forward under bf16 autocast.

    With ``parallel`` (several processes, every one calling this with the same ``data``), each
    process runs the batches ``rank, rank + W, ...``; the per-batch sums are gathered and added in
    batch order, so the result is bit for bit the one-process loss.
    """

    mine = [summed_loss(model, ids, mask, bf16) for b, (ids, mask) in enumerate(batches(data, batch_size))
            if is_mine(b, parallel)]
    total, count = 0.0, 0
    for loss, n in gather_shares([(float(loss), n) for loss, n in mine], parallel):
        total += loss
        count += n
    return total / max(count, 1)
