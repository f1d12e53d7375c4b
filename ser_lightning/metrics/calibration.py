"""Calibration of the dominant class and selective prediction: pure tensor maths on scored test utterances.

Expected calibration error (Guo et al., 2017) of the predicted dominant class against the human plurality label:
confidence = the largest predicted probability, put in ``num_bins`` equal-width bins ``(lo, hi]`` of [0, 1]
(a confidence of exactly 0 joins the first), ECE = Σ_b (n_b / N) |acc_b - conf_b|. Selective prediction keeps the
most confident fraction of the utterances by *predicted entropy* (lowest first, ties in input order) and scores
the dominant-class accuracy and the mean JS (bits) of what it keeps: a coverage curve, 100% being the full set.
No peer reports these for distributions; a row holding a NaN or an infinity makes every result NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ser_lightning.metrics.functional.distribution import js_divergence_bits_per_item
from ser_lightning.metrics.functional.probability import dominant_class, entropy

COVERAGES = tuple(round(0.1 * k, 1) for k in range(1, 11))  # 10%, 20%, ..., 100%


def _finite(preds: Tensor, target: Tensor) -> bool:
    if preds.shape != target.shape or preds.ndim != 2:
        raise ValueError(f"preds and target must both be (N, C), got {tuple(preds.shape)} and {tuple(target.shape)}")
    return bool(torch.isfinite(preds).all() and torch.isfinite(target).all())


def reliability_bins(preds: Tensor, target: Tensor, num_bins: int = 10) -> dict[str, Tensor]:
    """Per confidence bin ``(num_bins,)``: ``count``, mean ``confidence`` and ``accuracy`` (NaN where empty)."""
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    _finite(preds, target)
    p = preds.double() / preds.double().sum(-1, keepdim=True)
    confidence = p.max(-1).values
    correct = (dominant_class(p) == dominant_class(target.double())).double()
    edges = torch.tensor([b / num_bins for b in range(1, num_bins)], dtype=torch.float64)
    index = torch.bucketize(confidence, edges, right=False)  # (lo, hi] bins: a confidence on an edge goes below
    count = torch.bincount(index, minlength=num_bins).double()
    mean_conf = torch.bincount(index, weights=confidence, minlength=num_bins) / count
    accuracy = torch.bincount(index, weights=correct, minlength=num_bins) / count
    return {"count": count, "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(preds: Tensor, target: Tensor, num_bins: int = 10) -> float:
    """ECE of the dominant class over ``num_bins`` equal-width confidence bins (NaN for a non-finite or empty set)."""
    if not _finite(preds, target) or preds.shape[0] == 0:
        return math.nan
    bins = reliability_bins(preds, target, num_bins)
    used = bins["count"] > 0
    gap = (bins["accuracy"][used] - bins["confidence"][used]).abs()
    return float((bins["count"][used] * gap).sum() / bins["count"].sum())


def selective_scores(
    preds: Tensor, target: Tensor, coverages: Sequence[float] = COVERAGES
) -> dict[float, dict[str, float]]:
    """``{coverage: {"acc", "js", "count"}}`` on the ceil(coverage x N) utterances of lowest predicted entropy."""
    if any(not 0 < c <= 1 for c in coverages):
        raise ValueError(f"coverages must be in (0, 1], got {list(coverages)}")
    n = preds.shape[0]
    if not _finite(preds, target) or n == 0:
        return {c: {"acc": math.nan, "js": math.nan, "count": 0} for c in coverages}
    p = preds.double() / preds.double().sum(-1, keepdim=True)
    order = torch.sort(entropy(p), stable=True).indices
    correct = (dominant_class(p) == dominant_class(target.double())).double()[order]
    js = js_divergence_bits_per_item(preds, target)[order]
    out: dict[float, dict[str, float]] = {}
    for c in coverages:
        k = max(1, math.ceil(round(c * n, 9)))  # round: 0.3 x 10 is 3.0000000000000004
        out[c] = {"acc": float(correct[:k].mean()), "js": float(js[:k].mean()), "count": k}
    return out
