"""The importance pass: calibration over token blocks, then the width criterion and layer metrics (docs/method.md §2)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence

import torch

from ..arch import adapter_for
from ..config import ImportanceSection
from ..errors import CompactLMError
from ..evaluate import get_task
from ..hardware import autocast, forward_flops_per_token, mfu, peak_gflops, precision_for
from ..models import model_fingerprint
from ..parallel import DistInfo, all_reduce_sum, is_mine
from ..progress import progress
from .aggregation import parse_seq_aggregations
from .criteria import CRITERIA, CriterionOptions, check_criterion, check_criterion_for
from .depth import block_lengths, layer_losses, task_block_accuracy, task_tensor_name
from .hooks import ImportanceRecorder
from .loss import Batch, batches, lm_loss
from .scores import ImportanceScores

__all__ = ["estimate_importance", "lm_loss"]

logger = logging.getLogger(__name__)


def _num_tokens(data) -> int | None:
    return int(data.numel()) if isinstance(data, torch.Tensor) else None


def _block_len(data) -> int:
    """Tokens per block of (N, S) data (512 for batches given another way: only the MFU yardstick uses it)."""
    return int(data.shape[1]) if isinstance(data, torch.Tensor) and data.dim() == 2 else 512


@torch.inference_mode()
def _calibration_pass(model, recorder: ImportanceRecorder, data, batch_size: int, bf16: bool,
                      show_progress: bool, parallel: DistInfo | None = None) -> tuple[int, float]:
    """Forward ``data`` through the decoder body (no LM head: importance needs no logits) with ``recorder`` attached.

    With ``parallel``, this process forwards the batches ``rank, rank + W, ...`` (whole batches of
    the one-process pass) and the statistics are summed over processes afterwards.

    Returns (real tokens seen by all processes, seconds).
    """

    body = recorder.adapter.decoder_body(model)
    device = next(model.parameters()).device
    amp = autocast(device, bf16)
    seen, start = 0, time.perf_counter()
    with recorder.attached(), progress(total=_num_tokens(data), unit="tok", unit_scale=True, desc="importance",
                                       disable=None if show_progress else True) as bar:
        for b, (ids, mask) in enumerate(batches(data, batch_size)):
            if not is_mine(b, parallel):
                continue
            recorder.mask = None if mask is None else mask.to(device)
            with amp:
                body(input_ids=ids.to(device), attention_mask=recorder.mask, use_cache=False)
            n = int(mask.sum()) if mask is not None else ids.numel()
            seen += n
            bar.update(n)
    if parallel is not None and parallel.distributed:
        recorder.all_reduce(parallel)
        seen = int(all_reduce_sum(torch.tensor([seen], dtype=torch.float64, device=parallel.device), parallel).item())
    if seen == 0:
        raise CompactLMError("The calibration data gave no tokens. Provide a non-empty --data source.")
    return seen, time.perf_counter() - start


def _check_depth_tasks(model, tokenizer, depth_tasks: Sequence[str], examples: int, lengths) -> None:
    """Refuse bad depth-task options before any heavy work."""
    if not depth_tasks:
        return

    for name in depth_tasks:
        get_task(name)
    if tokenizer is None:
        raise CompactLMError("depth_tasks need the model's tokenizer to score the tasks: pass tokenizer=...")
    if examples <= 0:
        raise CompactLMError(f"--depth-task-examples must be > 0 (got {examples}).")
    block_lengths(model.config.num_hidden_layers, lengths)


def estimate_importance(
    model,
    data: torch.Tensor | Iterable[Batch],
    options: ImportanceSection | None = None,
    *,
    tokenizer=None,
    data_dir: str | os.PathLike | None = None,
    layers_only: bool = False,
    show_progress: bool = True,
    meta: dict | None = None,
    precision: str = "auto",
    parallel: DistInfo | None = None,
) -> ImportanceScores:
    """Score every prunable unit of ``model`` on ``data``, and every layer.

    Args:
        model: a causal LM of a supported family (see :mod:`compactlm.arch`).
        data: (N, S) token blocks, or an iterable of (B, S) tensors or
            ``{"input_ids", "attention_mask"}`` dicts (padded tokens are excluded).
        options: the importance options, as a recipe's ``importance`` section holds them
            (:class:`~compactlm.config.ImportanceSection`; default: its defaults).
            ``criterion``: width importance, one of :data:`~compactlm.importance.criteria.CRITERIA`:
            ``activation`` (hook statistics), ``magnitude``, ``taylor`` (one extra forward and
            backward over ``data``) or ``random`` (seeded by ``seed``). ``batch_size``: blocks per
            forward pass when ``data`` is a tensor (and per task batch). ``layer_loss_samples``:
            blocks used for the "LM loss with layer i removed" metric (L + 1 extra forward passes
            over them); 0 skips it. ``depth_tasks``: zero-shot tasks (e.g. ``["winogrande"]``)
            scored with every contiguous block of ``depth_task_lengths`` layers (default: every
            length) removed, on ``depth_task_examples`` examples each; needs ``tokenizer``, task
            data from ``data_dir`` (or ``$COMPACTLM_DATA_DIR``, the Hub, the bundle: see
            compactlm.evaluate). ``seq_aggregations``: sequence aggregations to record (``"mean"``
            by default, serving every ``BATCH,mean`` choice; ``"mean,l2,var"`` serves all nine at
            ~3x the hook cost). ``samples`` is the caller's: how many blocks it passes as ``data``.
        layers_only: record only the layer metrics, no width scores.
        precision: ``auto`` | ``bf16`` | ``fp32`` for the forward passes (see
            :mod:`compactlm.hardware`); the statistics are always accumulated in fp32/fp64.
        parallel: under ``torchrun``, the :class:`~compactlm.parallel.DistInfo` of this
            process (every process calls this with the same model and data). Each process takes
            the batches ``rank, rank + W, ...`` of every pass (calibration, taylor, layer loss, the
            task evaluations); the float64 moments are all-reduced, the losses and task scores are
            gathered in batch order. Every process returns the same scores: the layer losses and
            task accuracies are bit-identical to one process's, the moments equal to ~1e-15
            relative (float64 sums in another order), taylor scores to ~1e-6 (float32 gradients).

    Returns:
        :class:`ImportanceScores`: width scores (raw moments for ``activation``), Block
        Importance for every contiguous block, and the layer-removal metrics asked for.
    """
    o = options or ImportanceSection()
    criterion, batch_size = o.criterion, o.batch_size
    check_criterion(criterion)
    check_criterion_for(criterion, model.config)
    _check_depth_tasks(model, tokenizer, o.depth_tasks, o.depth_task_examples, o.depth_task_lengths)
    if criterion == "taylor" and not isinstance(data, torch.Tensor) and iter(data) is data:
        data = list(data)  # an iterator would be spent by the calibration pass
    adapter = adapter_for(model.config)
    seq_aggregations = parse_seq_aggregations(o.seq_aggregations)
    choice = precision_for(precision, model)
    recorder = ImportanceRecorder(model, adapter, layers_only=layers_only or criterion != "activation",
                                  seq_aggregations=seq_aggregations)
    seen, seconds = _calibration_pass(model, recorder, data, batch_size, choice.bf16, show_progress, parallel)
    tensors = recorder.tensors()
    if criterion != "activation" and not layers_only:
        unit_options = CriterionOptions(batch_size=batch_size, seed=o.seed, bf16=choice.bf16,
                                        show_progress=show_progress, parallel=parallel)
        unit = CRITERIA[criterion](model, data, unit_options)
        tensors |= {f"{axis}.score": t.float() for axis, t in unit._asdict().items()}
    depth, tasks = _removal_metrics(model, data, tokenizer, o, choice.bf16, data_dir, show_progress, parallel)
    tensors |= depth
    info = _metadata(model, adapter, data, seen, seconds, choice, batch_size, parallel)
    info |= {"criterion": criterion, **({"seed": o.seed} if criterion == "random" else {}),
             "layer_loss_samples": min(o.layer_loss_samples, len(data)) if isinstance(data, torch.Tensor) else 0,
             "depth_tasks": tasks, "layers_only": layers_only, "seq_aggregations": list(seq_aggregations),
             **(meta or {})}
    logger.info("importance: %d tokens in %.1f s (%.0f tok/s)", seen, seconds, seen / max(seconds, 1e-9))
    return ImportanceScores(tensors=tensors, meta=info)


def calibration_blocks(blocks: torch.Tensor, samples: int) -> torch.Tensor:
    """The first ``samples`` of the (N, S) token ``blocks`` for the importance pass (a recipe's
    ``importance.samples``). When the data holds fewer, all of them, and one warning says how many were used of
    how many asked: the scores are not silently computed on less than the recipe says."""
    if blocks.shape[0] < samples:
        logger.warning("importance: scoring on %d blocks, all the data holds, of the %d asked for (importance.samples); "
                       "give more text, or ask for at most %d", blocks.shape[0], samples, blocks.shape[0])
    return blocks[:samples]


def _removal_metrics(model, data, tokenizer, o: ImportanceSection, bf16: bool, data_dir, show_progress: bool,
                     parallel: DistInfo | None) -> tuple[dict[str, torch.Tensor], dict]:
    """The metrics that remove layers: LM loss with each layer removed, and task accuracy with each block removed."""
    tensors, tasks = {}, {}
    if o.layer_loss_samples > 0:
        if not isinstance(data, torch.Tensor):
            raise CompactLMError("layer_loss_samples needs data given as an (N, S) tensor of blocks; pass 0 to skip.")
        with torch.inference_mode():
            tensors["layers.loss"] = layer_losses(model, data[:o.layer_loss_samples], o.batch_size, bf16, show_progress,
                                                  parallel)
    for name in o.depth_tasks:
        acc, tasks[name] = task_block_accuracy(model, tokenizer, name, examples=o.depth_task_examples,
                                               lengths=o.depth_task_lengths, batch_size=o.batch_size, bf16=bf16,
                                               data_dir=data_dir, show_progress=show_progress, parallel=parallel)
        tensors[task_tensor_name(name)] = acc
    return tensors, tasks


def _metadata(model, adapter, data, seen: int, seconds: float, choice, batch_size: int,
              parallel: DistInfo | None = None) -> dict:
    device = next(model.parameters()).device
    rate = seen / max(seconds, 1e-9)
    processes = parallel.world_size if parallel is not None else 1
    peak = peak_gflops(choice, model.config, device, batch_size * _block_len(data))
    peak = peak * processes if peak else peak   # the rate is every process's tokens
    return {
        **({"processes": processes} if processes > 1 else {}),
        "model": getattr(model.config, "_name_or_path", None),
        "model_type": model.config.model_type,
        "fingerprint": model_fingerprint(model),
        "architecture": adapter.architecture(model.config).to_dict(),
        "tokens": seen,
        "seconds": round(seconds, 2),
        "tokens_per_second": round(rate, 1),
        "precision": choice.to_dict(),
        "mfu": mfu(forward_flops_per_token(model, lm_head=False), rate, peak) if peak else None,
    }
