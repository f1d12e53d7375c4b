"""Class-balanced cross-entropy (Cui et al., CVPR 2019), the AmbER² and entropy-aware baselines' loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ser_lightning.metrics.functional.probability import dominant_class


def class_balanced_weights(class_counts: Sequence[float], beta: float = 0.999) -> Tensor:
    """Per-class weights (1 - β) / (1 - β^n_c), normalised to sum to the number of classes.

    A class with no samples gets the weight of a class with one sample (it cannot occur as a target).
    """
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64).clamp_min(1.0)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    weights = (1.0 - beta) / (1.0 - beta**counts)
    return (weights / weights.sum() * counts.numel()).float()


class ClassBalancedCrossEntropyLoss(nn.Module):
    """Cross-entropy against the plurality label with class-balanced weights.

    Args:
        class_counts: training samples per class (plurality labels); None gives plain cross-entropy.
        beta: the effective-number hyper-parameter β.
    """

    def __init__(self, class_counts: Sequence[float] | None = None, beta: float = 0.999) -> None:
        super().__init__()
        self.beta = beta
        # not persistent: the weights follow from class_counts (a saved hyper-parameter), so a checkpoint
        # loads whether or not the run that tests it knows the training counts
        weight = None if class_counts is None else class_balanced_weights(class_counts, beta)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss for ``(B, C)`` logits and either ``(B,)`` class indices or ``(B, C)`` distributions (-> plurality)."""
        if target.ndim == 2:
            target = dominant_class(target)  # ties toward the first class, as labels.plurality
        weight = None if self.weight is None else self.weight.to(logits.dtype)
        return F.cross_entropy(logits, target.long(), weight=weight)
