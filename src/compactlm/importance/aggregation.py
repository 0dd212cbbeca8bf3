"""Streaming aggregation of activations into per-channel importance (docs/method.md §2).

An activation tensor ``x`` of shape (B, S, C) is reduced first over the sequence, per row
(``seq`` aggregation), then over rows, per channel (``batch`` aggregation). Both take
``mean`` (of |x|), ``l2`` or ``var``. Per row we reduce to the requested sequence statistics
(mean |x|, L2, variance over the row's real tokens), and across rows we keep the running sum
and sum of squares of each in float64, from which every batch aggregation follows. So one
pass with all three sequence statistics serves all nine combinations; the default records
only ``mean`` (one read of each activation instead of four), which serves ``*,mean``.
Nothing per token is stored, and padded tokens never enter any sum.
"""

from __future__ import annotations

import torch

from ..config import fields
from ..errors import CompactLMError, unknown_name

AGGREGATIONS = ("mean", "l2", "var")
DEFAULT_AGGREGATION = tuple(fields.DEFAULT_AGGREGATION.split(","))  # (batch, seq) l2,mean: best practice #2, Table 13
DEFAULT_SEQ_AGGREGATIONS = ("mean",)  # what the default records; all three serve all nine


def parse_aggregation(spec: str | tuple[str, str]) -> tuple[str, str]:
    """``"l2,mean"`` or ``("l2", "mean")`` -> (batch, seq), validated."""
    batch, seq = spec.split(",") if isinstance(spec, str) else spec
    for name in (batch, seq):
        if name not in AGGREGATIONS:
            raise unknown_name("aggregation", name, AGGREGATIONS)
    return batch, seq


def parse_seq_aggregations(names: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``"mean,l2"`` or ``("mean", "l2")`` -> validated tuple in canonical order."""
    names = names.split(",") if isinstance(names, str) else names
    for name in names:
        if name not in AGGREGATIONS:
            raise unknown_name("aggregation", name, AGGREGATIONS)
    return tuple(a for a in AGGREGATIONS if a in names)


def row_statistics(x: torch.Tensor, mask: torch.Tensor | None,
                   seq: tuple[str, ...] = AGGREGATIONS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sequence aggregations of ``x``.

    Args:
        x: (B, S, C) activations, any float dtype.
        mask: (B, S) with 1 for real tokens, or None when every token is real.
        seq: which of mean |x|, L2 and variance to compute, in that order.

    Returns:
        stats: (len(seq), R, C) float32 over each row's real tokens, for the R rows that
            have at least one real token.
        rows: (R,) indices of those rows.
    """
    x = x.float()
    if mask is None:
        n = torch.full((x.shape[0], 1), x.shape[1], dtype=torch.float32, device=x.device)
        rows = torch.arange(x.shape[0], device=x.device)
    else:
        m = mask.to(x.dtype)
        x = x * m.unsqueeze(-1)  # padded positions contribute exact zeros to every sum
        n = m.sum(1, keepdim=True)
        rows = torch.nonzero(n.squeeze(1) > 0).squeeze(1)
        x, n = x[rows], n[rows]
    out = []
    if "mean" in seq:
        out.append(torch.linalg.vector_norm(x, 1, dim=1) / n)         # (R, C) mean |x|
    if "l2" in seq or "var" in seq:
        l2 = torch.linalg.vector_norm(x, 2, dim=1)                     # (R, C) sqrt(sum x^2)
        if "l2" in seq:
            out.append(l2)
        if "var" in seq:
            out.append((l2.square() / n - (x.sum(1) / n).square()).clamp_min_(0))
    return torch.stack(out), rows


class ChannelStatistics:
    """Running batch-level moments of the row statistics ``seq`` for ``sites`` x ``channels``.

    ``sum`` and ``sumsq`` have shape (sites, len(seq), C); ``rows`` counts rows seen per site.
    """

    def __init__(self, sites: int, channels: int, device: torch.device | str = "cpu",
                 seq: tuple[str, ...] = AGGREGATIONS):
        self.seq = parse_seq_aggregations(seq)
        self.sum = torch.zeros(sites, len(self.seq), channels, dtype=torch.float64, device=device)
        self.sumsq = torch.zeros_like(self.sum)
        self.rows = torch.zeros(sites, dtype=torch.float64, device=device)

    def update(self, site: int, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        # under device_map the layers live on several devices: compute where x is, accumulate where the totals are
        stats, rows = row_statistics(x, mask.to(x.device) if mask is not None else None, self.seq)  # (k, R, C)
        stats = stats.double().to(self.sum.device)
        self.sum[site] += stats.sum(1)
        self.sumsq[site] += stats.square().sum(1)
        self.rows[site] += rows.numel()

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.sum": self.sum, f"{prefix}.sumsq": self.sumsq, f"{prefix}.rows": self.rows}


def finalize(total: torch.Tensor, total_sq: torch.Tensor, rows: torch.Tensor, batch: str, seq: str,
             recorded: tuple[str, ...] = AGGREGATIONS) -> torch.Tensor:
    """Batch aggregation of saved moments.

    Args:
        total, total_sq: (sites, k, C) running sums of the row statistics and of their squares.
        rows: (sites,) number of rows accumulated.
        recorded: the k sequence aggregations held in ``total``, in order.

    Returns:
        (sites, C) float32 scores for the (batch, seq) aggregation.
    """
    batch, seq = parse_aggregation((batch, seq))
    if seq not in recorded:
        raise CompactLMError(
            f"Sequence aggregation '{seq}' was not recorded (scores hold: {', '.join(recorded)}). "
            f"Recompute importance with --seq-aggregations {','.join(sorted(set(recorded) | {seq}))} "
            f"(or 'mean,l2,var' for all nine), or choose --aggregation BATCH,{recorded[0]}."
        )
    index = recorded.index(seq)
    s, sq = total[:, index], total_sq[:, index]
    n = rows.clamp_min(1).unsqueeze(-1)
    if batch == "mean":
        out = s / n
    elif batch == "l2":
        out = sq.sqrt()
    else:
        out = (sq / n - (s / n).square()).clamp_min(0)
    return out.float()
