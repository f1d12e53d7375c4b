"""Functional twins of the metrics: pure tensor math, no state. Names say what they return.

- ``*_per_item`` -> one score per utterance ``(N,)``; without the suffix -> the mean over utterances.
- ``js_divergence_bits*`` (log base 2, in [0, 1]) and ``kl_divergence_nats*``: the evaluation metrics (inputs
  renormalised in float64, a non-finite row scoring NaN).
- :mod:`.probability`: the differentiable per-distribution maths the losses share, the log base an argument
  (``entropy``, ``kl_divergence_per_item``, ``js_divergence_per_item``, nats by default) and ``dominant_class``.
"""

from ser_lightning.metrics.functional.classification import classification_scores, confusion_matrix, f1_per_class
from ser_lightning.metrics.functional.distribution import (
    DISTRIBUTION_METRICS,
    bhattacharyya_coefficient,
    bhattacharyya_coefficient_per_item,
    js_divergence_bits,
    js_divergence_bits_per_item,
    kl_divergence_nats,
    kl_divergence_nats_per_item,
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
    "js_divergence_bits",
    "js_divergence_bits_per_item",
    "kl_divergence_nats",
    "kl_divergence_nats_per_item",
    "r2_per_item",
]
