"""Figures of a run: importance, search, training curves.

Each function takes plain data and returns a ``matplotlib.figure.Figure``; :mod:`.html` embeds
them as PNG. Figures are built with the object-oriented API, not pyplot: no global figure
state to close and no backend chosen at import time (``savefig`` renders PNG with Agg).
"""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

KEPT, DROPPED = "#1f77b4", "#d62728"


def importance_heatmaps(neurons: torch.Tensor, heads: torch.Tensor, kept_layers: list[int],
                        neuron_title: str = "MLP neuron importance") -> Figure:
    """(L, I) neuron and (L, H) head scores per layer; each row normalised by its max, layers dropped marked."""
    fig = Figure(figsize=(12, 0.18 * neurons.shape[0] + 2))
    axes = fig.subplots(1, 2, width_ratios=[3, 1])
    for ax, scores, title, unit in ((axes[0], neurons, neuron_title, "neuron"),
                                    (axes[1], heads, "query head importance", "head")):
        rows = scores.float() / scores.float().amax(dim=1, keepdim=True).clamp_min(1e-12)
        image = ax.imshow(rows.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_title(f"{title} (row / row max)")
        ax.set_xlabel(unit)
        ax.set_ylabel("layer")
        for i in range(scores.shape[0]):
            if i not in kept_layers:
                ax.axhline(i, color=DROPPED, linewidth=1.2)
        fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    return fig


def expert_routing(importance: torch.Tensor, tokens: torch.Tensor, kept: dict[int, list[int]]) -> Figure:
    """(L, X) share of routed tokens and expert importance per layer; removed experts crossed out in red."""
    fig = Figure(figsize=(12, 0.18 * importance.shape[0] + 2))
    axes = fig.subplots(1, 2)
    share = tokens.double() / tokens.double().sum(dim=1, keepdim=True).clamp_min(1)
    for ax, values, title in ((axes[0], share, "share of routed tokens per expert"),
                              (axes[1], importance.double() / importance.double().amax(dim=1, keepdim=True).clamp_min(1e-12),
                               "expert importance (row / row max)")):
        image = ax.imshow(values.float().numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_title(title)
        ax.set_xlabel("expert")
        ax.set_ylabel("layer")
        for layer, experts in kept.items():
            removed = [e for e in range(values.shape[1]) if e not in experts]
            ax.scatter(removed, [layer] * len(removed), marker="x", color=DROPPED, s=12)
        fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    return fig


def channel_importance(channels: torch.Tensor, kept: list[int] | None) -> Figure:
    """(E,) hidden-channel scores sorted, kept channels in blue, pruned in red."""
    fig = Figure(figsize=(8, 3))
    ax = fig.subplots()
    order = torch.argsort(channels, descending=True)
    kept_set = set(kept) if kept is not None else set(range(channels.numel()))
    colors = [KEPT if int(i) in kept_set else DROPPED for i in order]
    ax.bar(range(channels.numel()), channels[order].float().numpy(), color=colors, width=1.0)
    ax.set_yscale("log")
    ax.set_xlabel("hidden channel (sorted by importance)")
    ax.set_ylabel("importance")
    ax.set_title(f"embedding-channel importance: {len(kept_set)} of {channels.numel()} kept (blue)")
    fig.tight_layout()
    return fig


def layer_importance(bi: torch.Tensor, loss: torch.Tensor | None, base_loss: float | None,
                     kept_layers: list[int]) -> Figure:
    """Block Importance and LM-loss increase when each layer alone is removed; dropped layers in red."""
    panels = 2 if loss is not None else 1
    fig = Figure(figsize=(6 * panels, 3))
    axes = fig.subplots(1, panels, squeeze=False)
    colors = [KEPT if i in kept_layers else DROPPED for i in range(bi.numel())]
    axes[0][0].bar(range(bi.numel()), bi.numpy(), color=colors)
    axes[0][0].set_title("Block Importance 1 − cos(h_i, h_i+1)")
    axes[0][0].set_xlabel("layer")
    if loss is not None:
        delta = loss - (base_loss or 0.0)
        axes[0][1].bar(range(loss.numel()), delta.numpy(), color=colors)
        axes[0][1].set_yscale("symlog", linthresh=1e-2)
        axes[0][1].set_title("LM-loss increase with layer i removed")
        axes[0][1].set_xlabel("layer")
    fig.suptitle("layer importance (red: removed)")
    fig.tight_layout()
    return fig


def search_scatter(rows: list[dict]) -> Figure:
    """Proxy loss against parameters for every candidate; retrained ones and the winner marked."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    params = [r["params"] / 1e6 for r in rows]
    ax.scatter(params, [r["proxy_loss"] for r in rows], color="#999999", label="proxy (pruned, no retraining)")
    retrained = [r for r in rows if r.get("retrained_loss") is not None]
    if retrained:
        ax.scatter([r["params"] / 1e6 for r in retrained], [r["retrained_loss"] for r in retrained],
                   color=KEPT, label="after the short distillation")
    for r in rows:
        if r.get("selected"):
            y = r["retrained_loss"] if r.get("retrained_loss") is not None else r["proxy_loss"]
            ax.scatter([r["params"] / 1e6], [y], s=160, facecolors="none", edgecolors=DROPPED, linewidths=2,
                       label=f"selected: {r['name']}")
    ax.set_yscale("log")
    ax.set_xlabel("parameters (M)")
    ax.set_ylabel("held-out LM loss (nats)")
    ax.set_title("architecture search")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def speed_frontier(rows: list[dict], metric: str, unit: str) -> Figure:
    """Proxy loss against measured speed (median, bars: the middle half of the runs); the frontier and the winner marked.

    ``rows`` carry ``latency_median``/``latency_q1``/``latency_q3`` in ``metric`` and ``pareto``.
    """
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    x = [r["latency_median"] for r in rows]
    ax.errorbar(x, [r["proxy_loss"] for r in rows], xerr=[[r["latency_median"] - r["latency_q1"] for r in rows],
                                                          [r["latency_q3"] - r["latency_median"] for r in rows]],
                fmt="o", color="#999999", ecolor="#cccccc", label="candidate (bars: middle half of the timed runs)")
    front = sorted((r for r in rows if r.get("pareto")), key=lambda r: r["latency_median"])
    if front:
        ax.plot([r["latency_median"] for r in front], [r["proxy_loss"] for r in front], "-o", color=KEPT,
                label="frontier (no faster-or-tied candidate has a lower loss)")
    for r in rows:
        if r.get("selected"):
            ax.scatter([r["latency_median"]], [r["proxy_loss"]], s=160, facecolors="none", edgecolors=DROPPED,
                       linewidths=2, label=f"selected: {r['name']}")
    ax.set_xlabel(f"measured {metric} ({unit}; {'higher' if unit == 'tok/s' else 'lower'} is faster)")
    ax.set_ylabel("proxy: held-out LM loss after pruning (nats)")
    ax.set_title("quality/speed frontier")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def training_curves(runs: dict[str, tuple[list[dict], int]]) -> Figure:
    """Training loss and held-out LM loss against tokens seen, per named run.

    ``runs`` maps a label to (metrics.jsonl records, tokens the model had already seen when the
    run started): a student that continues a search candidate's distillation starts further right.
    """
    fig = Figure(figsize=(12, 3.5))
    axes = fig.subplots(1, 2)
    for label, (records, offset) in runs.items():
        train = [(offset + r["tokens"], r["loss"]) for r in records if "loss" in r and "tokens" in r]
        tokens_per_step = (train[0][0] - offset) / max(1, next(r["step"] for r in records if "loss" in r)) if train else 0
        val = [(offset + r["step"] * tokens_per_step, r["val_lm_loss"]) for r in records if "val_lm_loss" in r]
        if train:
            axes[0].plot(*zip(*train), label=label)
        if val:
            axes[1].plot(*zip(*val), marker="o", label=label)
    axes[0].set_title("training loss (distillation objective)")
    axes[1].set_ylabel("nats")
    axes[1].set_title("held-out LM loss")
    for ax in axes:
        ax.set_xlabel("tokens")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
