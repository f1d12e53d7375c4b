"""Distribution and classification metrics as torchmetrics ``Metric`` classes, exact under DDP."""

from ser_lightning.metrics.binned import WIDTH_EDGES, AmbiguityBinnedMetrics, width_bins
from ser_lightning.metrics.classification import DominantClassScores
from ser_lightning.metrics.distribution import (
    BhattacharyyaCoefficient,
    DistributionR2,
    JensenShannonDivergence,
    KLDivergence,
)

__all__ = [
    "WIDTH_EDGES",
    "AmbiguityBinnedMetrics",
    "BhattacharyyaCoefficient",
    "DistributionR2",
    "DominantClassScores",
    "JensenShannonDivergence",
    "KLDivergence",
    "width_bins",
]
