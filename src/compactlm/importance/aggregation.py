"""Streaming aggregation of activations into per-channel importance (METHOD.md §2).

An activation tensor ``x`` of shape (B, S, C) is reduced first over the sequence, per row
(``seq`` aggregation), then over rows, per channel (``batch`` aggregation). Both take
``mean`` (of |x|), ``l2`` or ``var``. All nine combinations come out of one pass: per row we
reduce to three statistics (mean |x|, L2, variance over the row's real tokens), and across
rows we keep the running sum and sum of squares of each in float64. Nothing per token is
stored, and padded tokens never enter any sum.
"""

from __future__ import annotations

import torch

from ..errors import unknown_name

AGGREGATIONS = ("mean", "l2", "var")
SEQ_INDEX = {name: i for i, name in enumerate(AGGREGATIONS)}
DEFAULT_AGGREGATION = ("l2", "mean")  # (batch, seq): paper best practice #2, Table 13


def parse_aggregation(spec: str | tuple[str, str]) -> tuple[str, str]:
    """``"l2,mean"`` or ``("l2", "mean")`` -> (batch, seq), validated."""
    batch, seq = spec.split(",") if isinstance(spec, str) else spec
    for name in (batch, seq):
        if name not in AGGREGATIONS:
            raise unknown_name("aggregation", name, AGGREGATIONS)
    return batch, seq


def row_statistics(x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sequence aggregations of ``x``.

    Args:
        x: (B, S, C) activations, any float dtype.
        mask: (B, S) with 1 for real tokens, or None when every token is real.

    Returns:
        stats: (3, R, C) float32 — mean |x|, L2 and variance over each row's real tokens,
            for the R rows that have at least one real token.
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
    abs_sum = torch.linalg.vector_norm(x, 1, dim=1)   # (R, C)
    sq_sum = torch.linalg.vector_norm(x, 2, dim=1)    # (R, C) = sqrt(sum x^2)
    mean = x.sum(1) / n
    var = (sq_sum.square() / n - mean.square()).clamp_min_(0)
    return torch.stack([abs_sum / n, sq_sum, var]), rows


class ChannelStatistics:
    """Running batch-level moments of the three row statistics for ``sites`` x ``channels``.

    ``sum`` and ``sumsq`` have shape (sites, 3, C); ``rows`` counts rows seen per site.
    """

    def __init__(self, sites: int, channels: int, device: torch.device | str = "cpu"):
        self.sum = torch.zeros(sites, 3, channels, dtype=torch.float64, device=device)
        self.sumsq = torch.zeros(sites, 3, channels, dtype=torch.float64, device=device)
        self.rows = torch.zeros(sites, dtype=torch.float64, device=device)

    def update(self, site: int, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        stats, rows = row_statistics(x, mask)            # (3, R, C)
        stats = stats.double()
        self.sum[site] += stats.sum(1)
        self.sumsq[site] += stats.square().sum(1)
        self.rows[site] += rows.numel()

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.sum": self.sum, f"{prefix}.sumsq": self.sumsq, f"{prefix}.rows": self.rows}


def finalize(total: torch.Tensor, total_sq: torch.Tensor, rows: torch.Tensor, batch: str, seq: str) -> torch.Tensor:
    """Batch aggregation of saved moments.

    Args:
        total, total_sq: (sites, 3, C) running sums of the row statistics and of their squares.
        rows: (sites,) number of rows accumulated.

    Returns:
        (sites, C) float32 scores for the (batch, seq) aggregation.
    """
    batch, seq = parse_aggregation((batch, seq))
    s = total[:, SEQ_INDEX[seq]]
    sq = total_sq[:, SEQ_INDEX[seq]]
    n = rows.clamp_min(1).unsqueeze(-1)
    if batch == "mean":
        out = s / n
    elif batch == "l2":
        out = sq.sqrt()
    else:
        out = (sq / n - (s / n).square()).clamp_min(0)
    return out.float()
