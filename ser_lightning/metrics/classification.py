"""Accuracy, macro-F1 and weighted-F1 of the dominant predicted class against the human plurality label."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from ser_lightning.metrics.functional.classification import classification_scores, confusion_matrix, dominant_class


class DominantClassScores(Metric):
    """Classification scores from a confusion matrix reduced by sum (exact under DDP).

    torchmetrics' ``MulticlassF1Score`` leaves classes absent from both predictions and targets out of
    its macro average; the papers' sklearn evaluation counts them as 0, so the matrix is kept here. Rows whose
    prediction or target holds a NaN or an infinity have no dominant class: they are counted, kept out of the
    matrix, and make every score NaN rather than an argmax-of-NaN class 0.

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
        self.add_state("nonfinite", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add predicted and target distributions ``(N, C)``; both are reduced to their dominant class."""
        preds, target = preds.detach(), target.detach()
        finite = torch.isfinite(preds).all(-1) & torch.isfinite(target).all(-1)
        self.nonfinite += (~finite).sum()
        pred_labels, target_labels = dominant_class(preds[finite]), dominant_class(target[finite])
        self.confmat += confusion_matrix(pred_labels, target_labels, self.num_classes)

    def compute(self) -> dict[str, Tensor]:
        """``acc``, ``f1`` (macro) and ``wf1`` (weighted by support); all NaN if a non-finite row was seen."""
        scores = classification_scores(self.confmat)
        if self.nonfinite > 0:
            return {k: torch.tensor(float("nan")) for k in scores}
        return {k: v.float() for k, v in scores.items()}
