"""torchmetrics ``Metric`` classes for distribution fidelity, each a mean over utterances.

State is a sum and a count reduced by sum, so the result is exact under DDP whatever the number of
samples per rank.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchmetrics import Metric

from ser_lightning.metrics.functional.distribution import (
    bhattacharyya_coefficient_per_item,
    js_divergence_per_item,
    kl_divergence_per_item,
    r2_per_item,
)


class _MeanOverItems(Metric):
    """Mean of a per-utterance score; subclasses name the score function."""

    full_state_update = False
    is_differentiable = False
    score_fn: Callable[[Tensor, Tensor], Tensor]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch of predicted and target distributions, both ``(N, C)``."""
        scores = type(self).score_fn(preds.detach(), target.detach())
        self.total += scores.sum()
        self.count += scores.numel()

    def compute(self) -> Tensor:
        """Mean score over every utterance seen (NaN before any update)."""
        return (self.total / self.count).float() if self.count > 0 else torch.tensor(float("nan"))


class JensenShannonDivergence(_MeanOverItems):
    """Mean JS divergence in bits (lower is better, in [0, 1])."""

    higher_is_better = False
    score_fn = staticmethod(js_divergence_per_item)


class BhattacharyyaCoefficient(_MeanOverItems):
    """Mean Bhattacharyya coefficient Σ√(pq) (higher is better, in [0, 1])."""

    higher_is_better = True
    score_fn = staticmethod(bhattacharyya_coefficient_per_item)


class DistributionR2(_MeanOverItems):
    """Mean per-utterance squared Pearson correlation of predicted and target vectors (higher is better)."""

    higher_is_better = True
    score_fn = staticmethod(r2_per_item)


class KLDivergence(_MeanOverItems):
    """Mean KL(target ‖ pred) in nats (lower is better)."""

    higher_is_better = False
    score_fn = staticmethod(kl_divergence_per_item)
