"""Calibration batches and the LM loss over them, shared by the importance pass and its metrics."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from ..arch import logit_chunk_tokens
from ..evaluate.loglikelihood import head_and_body, upcast
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
    """(sum of next-token cross-entropy over real tokens (nats, a 0-dim tensor), number of those tokens).

    The vocabulary projection runs on ``logit_chunk_tokens(vocab)`` tokens at a time, so the logits of a
    large vocabulary never exist for the whole batch (8 x 512 tokens of a 262K vocabulary would be 4.3 GB).
    """
    device = next(model.parameters()).device
    ids = ids.to(device)
    mask = None if mask is None else mask.to(device)
    labels = ids[:, 1:].clone()
    if mask is not None:
        labels[mask[:, 1:] == 0] = -100
    labels = labels.flatten()
    try:
        body, head = head_and_body(model)
    except NotImplementedError:     # no decoder + head split: the whole batch's logits at once
        body, head = None, None
    with autocast(device, bf16):
        if body is None:
            hidden = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].flatten(0, 1)  # logits
        else:
            hidden = body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[:, :-1].flatten(0, 1)
    step = len(labels) if body is None else logit_chunk_tokens(model.config.vocab_size)
    loss = torch.zeros((), device=device)
    for start in range(0, len(labels), step):
        with autocast(device, bf16):
            logits = hidden[start:start + step] if body is None else head(hidden[start:start + step])
        loss = loss + F.cross_entropy(upcast(logits), labels[start:start + step], ignore_index=-100, reduction="sum")
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
