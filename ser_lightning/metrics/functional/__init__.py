"""Functional twins of the metric classes: pure tensor math, no state.

:mod:`~ser_lightning.metrics.functional.probability` holds the per-row distribution maths (entropy, KL, JS with a
log base, dominant class) that losses and models share; ``js_divergence`` and ``kl_divergence`` here are the
metrics' means over utterances (bits and nats).
"""

from ser_lightning.metrics.functional.classification import classification_scores, confusion_matrix, f1_per_class
from ser_lightning.metrics.functional.distribution import (
    DISTRIBUTION_METRICS,
    bhattacharyya_coefficient,
    bhattacharyya_coefficient_per_item,
    js_divergence,
    js_divergence_per_item,
    kl_divergence,
    kl_divergence_per_item,
    r2_per_item,
)
from ser_lightning.metrics.functional.probability import dominant_class, entropy

__all__ = [
    "DISTRIBUTION_METRICS",
    "bhattacharyya_coefficient",
    "bhattacharyya_coefficient_per_item",
    "classification_scores",
    "confusion_matrix",
    "dominant_class",
    "entropy",
    "f1_per_class",
    "js_divergence",
    "js_divergence_per_item",
    "kl_divergence",
    "kl_divergence_per_item",
    "r2_per_item",
]
