"""Functional twins of the metric classes: pure tensor math, no state."""

from ser_lightning.metrics.functional.classification import classification_scores, confusion_matrix, dominant_class
from ser_lightning.metrics.functional.distribution import (
    DISTRIBUTION_METRICS,
    bhattacharyya_coefficient,
    bhattacharyya_coefficient_per_item,
    js_divergence,
    js_divergence_per_item,
    kl_divergence,
    kl_divergence_per_item,
    r2_per_item,
    r2_score_distribution,
)

__all__ = [
    "DISTRIBUTION_METRICS",
    "bhattacharyya_coefficient",
    "bhattacharyya_coefficient_per_item",
    "classification_scores",
    "confusion_matrix",
    "dominant_class",
    "js_divergence",
    "js_divergence_per_item",
    "kl_divergence",
    "kl_divergence_per_item",
    "r2_per_item",
    "r2_score_distribution",
]
