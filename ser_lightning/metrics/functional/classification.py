"""Classification of the predicted dominant class against the human plurality label, from a confusion matrix.

Macro- and weighted-F1 cover every class of the class set, a class that never occurs scoring 0
(sklearn's ``labels=all, zero_division=0``); accuracy is the plain fraction correct.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ser_lightning.metrics.functional.probability import dominant_class

__all__ = ["classification_scores", "confusion_matrix", "dominant_class"]


def confusion_matrix(pred_labels: Tensor, target_labels: Tensor, num_classes: int) -> Tensor:
    """``num_classes x num_classes`` counts, rows = target class, columns = predicted class."""
    idx = target_labels.long() * num_classes + pred_labels.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_scores(confmat: Tensor) -> dict[str, Tensor]:
    """Accuracy, macro-F1 and weighted-F1 from a confusion matrix (rows = target)."""
    cm = confmat.double()
    tp = cm.diagonal()
    support = cm.sum(1)
    predicted = cm.sum(0)
    total = cm.sum()
    denom = support + predicted
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1e-12), torch.zeros_like(tp))
    acc = tp.sum() / total if total > 0 else torch.tensor(float("nan"), dtype=torch.float64)
    wf1 = (f1 * support).sum() / total if total > 0 else torch.tensor(float("nan"), dtype=torch.float64)
    return {"acc": acc, "f1": f1.mean(), "wf1": wf1}

