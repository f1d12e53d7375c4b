"""Matplotlib figures of an evaluation: per-bin metrics, the confusion matrix and the reliability diagram.

Figures are built as :class:`matplotlib.figure.Figure` objects, without pyplot, so importing the models never
selects or changes the program's matplotlib backend and no figure is left open in pyplot's registry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from matplotlib.figure import Figure
from torch import Tensor

BAR_METRICS = ("js", "bc", "r2", "acc", "f1")


def bin_bar_chart(values: dict[str, torch.Tensor], metrics: Sequence[str] = BAR_METRICS) -> Figure:
    """Grouped bars: each metric per ambiguity bin (bin 1 = least ambiguous), with sample counts."""
    bins = sorted({k.split("/")[0] for k in values if k.startswith("bin")}, key=lambda b: int(b[3:]))
    fig = Figure(figsize=(7, 3.5))
    ax = fig.subplots()
    width = 0.8 / max(len(bins), 1)
    for i, b in enumerate(bins):
        heights = [float(values[f"{b}/{m}"]) for m in metrics]  # float() also moves CUDA scalars to the host
        count = int(values[f"{b}/count"])
        ax.bar([x + i * width for x in range(len(metrics))], heights, width, label=f"{b} (n={count})")
    ax.set_xticks([x + width * (len(bins) - 1) / 2 for x in range(len(metrics))], list(metrics))
    ax.set_ylim(0, 1)
    ax.set_title("metrics per ambiguity bin (target entropy)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def confusion_figure(confusion: torch.Tensor, classes: Sequence[str]) -> Figure:
    """Row-normalised confusion matrix of plurality (rows) against predicted dominant class (columns)."""
    cm = confusion.detach().cpu().double()
    norm = cm / cm.sum(1, keepdim=True).clamp_min(1)
    fig = Figure(figsize=(1 + 0.7 * len(classes), 1 + 0.6 * len(classes)))
    ax = fig.subplots()
    ax.imshow(norm.numpy(), vmin=0, vmax=1, cmap="Blues")
    for r in range(cm.shape[0]):
        for c in range(cm.shape[1]):
            ax.text(c, r, int(cm[r, c]), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(classes)), list(classes), rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("plurality")
    fig.tight_layout()
    return fig


def reliability_figure(bins: dict[str, Tensor], ece: float) -> Figure:
    """Accuracy per confidence bin against the diagonal, with each bin's share of the utterances."""
    num_bins = bins["count"].numel()
    centres = [(b + 0.5) / num_bins for b in range(num_bins)]
    accuracy = [0.0 if math.isnan(float(a)) else float(a) for a in bins["accuracy"]]
    share = (bins["count"] / bins["count"].sum().clamp_min(1)).tolist()
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.bar(centres, accuracy, 1 / num_bins, edgecolor="black", label="accuracy of the dominant class")
    ax.bar(centres, share, 1 / num_bins, alpha=0.3, label="share of utterances")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (largest predicted probability)")
    ax.set_title(f"reliability (ECE {ece:.3f})")
    ax.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    return fig
