"""The importance pass: forward-only calibration over token blocks (docs/method.md §2)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from ..arch import adapter_for
from ..errors import CompactLMError
from ..hardware import autocast, forward_flops_per_token, mfu, peak_gflops, precision_for
from ..progress import progress
from .aggregation import DEFAULT_SEQ_AGGREGATIONS, parse_seq_aggregations
from .hooks import ImportanceRecorder, layers_removed
from .scores import ImportanceScores, model_fingerprint

logger = logging.getLogger(__name__)

Batch = torch.Tensor | dict[str, torch.Tensor]


def _batches(data: torch.Tensor | Iterable[Batch], batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
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


def _num_tokens(data) -> int | None:
    return int(data.numel()) if isinstance(data, torch.Tensor) else None


def _block_len(data) -> int:
    """Tokens per block of (N, S) data (512 for batches given another way: only the MFU yardstick uses it)."""
    return int(data.shape[1]) if isinstance(data, torch.Tensor) and data.dim() == 2 else 512


@torch.inference_mode()
def lm_loss(model, data, batch_size: int = 8, bf16: bool = False) -> float:
    """Mean next-token cross-entropy over real tokens (nats); ``bf16`` runs the forward under bf16 autocast."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for ids, mask in _batches(data, batch_size):
        ids = ids.to(device)
        mask = None if mask is None else mask.to(device)
        with autocast(device, bf16):
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
        labels = ids[:, 1:].clone()
        if mask is not None:
            labels[mask[:, 1:] == 0] = -100
        loss = F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)).flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
        total += float(loss)
        count += int((labels != -100).sum())
    return total / max(count, 1)


@torch.inference_mode()
def estimate_importance(
    model,
    data: torch.Tensor | Iterable[Batch],
    *,
    batch_size: int = 8,
    layer_loss_samples: int = 8,
    layers_only: bool = False,
    seq_aggregations: str | tuple[str, ...] = DEFAULT_SEQ_AGGREGATIONS,
    show_progress: bool = True,
    meta: dict | None = None,
    precision: str = "auto",
) -> ImportanceScores:
    """Score every prunable unit of ``model`` from activations on ``data``.

    Args:
        model: a causal LM of a supported family (see :mod:`compactlm.arch`).
        data: (N, S) token blocks, or an iterable of (B, S) tensors or
            ``{"input_ids", "attention_mask"}`` dicts (padded tokens are excluded).
        batch_size: blocks per forward pass when ``data`` is a tensor.
        layer_loss_samples: blocks used for the "LM loss with layer i removed" metric
            (L + 1 extra forward passes over them); 0 skips it.
        layers_only: record only the residual stream (depth metrics), not width statistics.
        seq_aggregations: sequence aggregations to record (``"mean"`` by default, serving
            every ``BATCH,mean`` choice; ``"mean,l2,var"`` serves all nine at ~3x the hook cost).
        precision: ``auto`` | ``bf16`` | ``fp32`` for the forward passes (see
            :mod:`compactlm.hardware`); the statistics are always accumulated in fp32/fp64.

    Returns:
        :class:`ImportanceScores` holding raw moments for all nine aggregations, Block
        Importance for every contiguous block, and the per-layer loss metric.
    """
    adapter = adapter_for(model.config)
    body = adapter.decoder_body(model)  # no LM head: importance needs no logits
    device = next(model.parameters()).device
    seq_aggregations = parse_seq_aggregations(seq_aggregations)
    choice = precision_for(precision, model)
    amp = autocast(device, choice.bf16)
    recorder = ImportanceRecorder(model, adapter, layers_only=layers_only, seq_aggregations=seq_aggregations)
    total = _num_tokens(data)
    seen = 0
    start = time.perf_counter()
    with recorder.attached(), progress(total=total, unit="tok", unit_scale=True, desc="importance",
                                       disable=None if show_progress else True) as bar:
        for ids, mask in _batches(data, batch_size):
            recorder.mask = None if mask is None else mask.to(device)
            with amp:
                body(input_ids=ids.to(device), attention_mask=recorder.mask, use_cache=False)
            n = int(mask.sum()) if mask is not None else ids.numel()
            seen += n
            bar.update(n)
    if seen == 0:
        raise CompactLMError("The calibration data gave no tokens. Provide a non-empty --data source.")
    seconds = time.perf_counter() - start
    tensors = recorder.tensors()

    if layer_loss_samples > 0:
        if not isinstance(data, torch.Tensor):
            raise CompactLMError("layer_loss_samples needs data given as an (N, S) tensor of blocks; pass 0 to skip.")
        subset = data[:layer_loss_samples]
        layers = adapter.decoder_layers(model)
        losses = []
        for i in progress(range(len(layers)), desc="layer loss", disable=None if show_progress else True):
            with layers_removed(layers, [i]):
                losses.append(lm_loss(model, subset, batch_size, choice.bf16))
        losses.append(lm_loss(model, subset, batch_size, choice.bf16))
        tensors["layers.loss"] = torch.tensor(losses, dtype=torch.float64)

    info = {
        "model": getattr(model.config, "_name_or_path", None),
        "model_type": model.config.model_type,
        "fingerprint": model_fingerprint(model),
        "architecture": adapter.architecture(model.config).to_dict(),
        "tokens": seen,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(seen / max(seconds, 1e-9), 1),
        "layer_loss_samples": min(layer_loss_samples, len(data)) if isinstance(data, torch.Tensor) else 0,
        "layers_only": layers_only,
        "seq_aggregations": list(seq_aggregations),
        "precision": choice.to_dict(),
        "mfu": (mfu(forward_flops_per_token(model, lm_head=False), seen / max(seconds, 1e-9), peak)
                if (peak := peak_gflops(choice, model.config, device, batch_size * _block_len(data))) else None),
        **(meta or {}),
    }
    logger.info("importance: %d tokens in %.1f s (%.0f tok/s)", seen, seconds, seen / max(seconds, 1e-9))
    return ImportanceScores(tensors=tensors, meta=info)
