"""Accuracy, macro-F1 and weighted-F1 of the dominant predicted class against the human plurality label."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from ser_lightning.metrics.functional.classification import classification_scores, confusion_matrix, dominant_class


class DominantClassScores(Metric):
    """Classification scores from a confusion matrix reduced by sum (exact under DDP).

    torchmetrics' ``MulticlassF1Score`` leaves classes absent from both predictions and targets out of
    its macro average; the papers' sklearn evaluation counts them as 0, so the matrix is kept here.

    Args:
        num_classes: size of the class set.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_classes: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.add_state("confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add predicted and target distributions ``(N, C)``; both are reduced to their dominant class."""
        pred_labels, target_labels = dominant_class(preds.detach()), dominant_class(target.detach())
        self.confmat += confusion_matrix(pred_labels, target_labels, self.num_classes)

    def compute(self) -> dict[str, Tensor]:
        """``acc``, ``f1`` (macro) and ``wf1`` (weighted by support)."""
        return {k: v.float() for k, v in classification_scores(self.confmat).items()}
