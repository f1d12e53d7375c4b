"""Evaluation metrics exact under DDP: :class:`AmbiguityBinnedMetrics` (a torchmetrics ``Metric``) and its maths.

:mod:`.functional` holds the per-utterance scores (JS in bits, BC, R², KL in nats), the classification scores and
the distribution maths with an explicit log base (:mod:`.functional.probability`) that losses share; :mod:`.bootstrap`
and :mod:`.calibration` the test pass's intervals and calibration.
"""

from ser_lightning.metrics.binned import WIDTH_EDGES, AmbiguityBinnedMetrics, tertile_bins, width_bins

__all__ = ["WIDTH_EDGES", "AmbiguityBinnedMetrics", "tertile_bins", "width_bins"]
