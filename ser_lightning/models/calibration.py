"""Calibration of a test pass from its gathered records: ECE, the coverage curve and the reliability diagram.

:func:`calibration_report` turns the rank-0 records of :class:`~ser_lightning.models.test_predictions.ScoredPredictions`
into ``test_metrics.json`` entries (``test/ece``, ``test/coverage10/acc``, ``test/coverage10/js``, ...,
``test/coverage100/*`` being the whole set), writes ``reliability.png`` and adds the diagram to TensorBoard as
``test/reliability``. The maths is :mod:`ser_lightning.metrics.calibration`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch import Tensor

from ser_lightning.metrics.calibration import COVERAGES, expected_calibration_error, reliability_bins, selective_scores
from ser_lightning.models.test_predictions import records_as_tensors

FIGURE_NAME = "reliability.png"
NUM_BINS = 10


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


def calibration_report(records: list[dict[str, Any]], out_dir: Path | None = None, experiment: Any = None) -> dict:
    """ECE and coverage-curve entries of the records; the diagram into ``out_dir`` and ``experiment`` if given.

    Returns ``{}`` for no records. ``experiment`` is a TensorBoard ``SummaryWriter`` (anything with ``add_figure``).
    """
    if not records:
        return {}
    probs, targets, _ = records_as_tensors(records)
    ece = expected_calibration_error(probs, targets, NUM_BINS)
    out: dict[str, float | None] = {"test/ece": None if math.isnan(ece) else ece}
    for coverage, scores in selective_scores(probs, targets, COVERAGES).items():
        for name in ("acc", "js"):
            value = scores[name]
            out[f"test/coverage{round(100 * coverage)}/{name}"] = None if math.isnan(value) else value
    if math.isnan(ece) or (out_dir is None and experiment is None):
        return out
    fig = reliability_figure(reliability_bins(probs, targets, NUM_BINS), ece)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(out_dir) / FIGURE_NAME, dpi=100)
    if experiment is not None and hasattr(experiment, "add_figure"):
        experiment.add_figure("test/reliability", fig, close=True)
    return out
