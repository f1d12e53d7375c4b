"""Classification of the predicted dominant class against the human plurality label, from a confusion matrix.

Macro- and weighted-F1 cover every class of the class set, a class that never occurs scoring 0
(sklearn's ``labels=all, zero_division=0``); accuracy is the plain fraction correct. UAR (unweighted average
recall) averages the recall of the classes that occur among the targets: a class without support has no recall
(sklearn's ``balanced_accuracy_score``; the authors' ``utils/metric_utils.py::cat_metrics`` ``ua``). With every
class present it is the macro recall over the whole class set. An empty matrix scores NaN throughout.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["classification_scores", "confusion_matrix", "f1_per_class"]


def confusion_matrix(pred_labels: Tensor, target_labels: Tensor, num_classes: int) -> Tensor:
    """``num_classes x num_classes`` counts, rows = target class, columns = predicted class."""
    idx = target_labels.long() * num_classes + pred_labels.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def f1_per_class(confmat: Tensor) -> Tensor:
    """F1 of each class ``(C,)`` from a confusion matrix (rows = target); 0 for a class never seen nor predicted."""
    cm = confmat.double()
    tp = cm.diagonal()
    denom = cm.sum(1) + cm.sum(0)
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1e-12), torch.zeros_like(tp))


def classification_scores(confmat: Tensor) -> dict[str, Tensor]:
    """Accuracy, macro-F1, weighted-F1 and UAR from a confusion matrix (rows = target)."""
    cm = confmat.double()
    tp = cm.diagonal()
    support = cm.sum(1)
    total = cm.sum()
    if total == 0:
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        return {"acc": nan, "f1": nan.clone(), "wf1": nan.clone(), "uar": nan.clone()}
    f1 = f1_per_class(cm)
    present = support > 0
    recall = tp[present] / support[present]
    return {"acc": tp.sum() / total, "f1": f1.mean(), "wf1": (f1 * support).sum() / total, "uar": recall.mean()}
