"""Class-balanced cross-entropy (Cui et al., CVPR 2019), the AmbER² and entropy-aware baselines' loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

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
    """Cross-entropy against a hard label with class-balanced weights.

    Args:
        class_counts: training samples per class (plurality labels); None gives plain cross-entropy.
        beta: the effective-number hyper-parameter β (the entropy-curriculum authors use 0.9999).
        reduction: ``mean``: torch's weighted mean Σ w_y·nll / Σ w_y; ``batchmean``: the plain batch mean of
            w_y·nll, as the authors' ``train_ser.py`` (``SerBrain.compute_objectives``, cbce branch);
            ``none``: the per-sample w_y·nll ``(B,)``, for the entropy curriculum's weighted mean.
    """

    def __init__(
        self,
        class_counts: Sequence[float] | None = None,
        beta: float = 0.999,
        reduction: Literal["mean", "batchmean", "none"] = "mean",
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "batchmean", "none"):
            raise ValueError(f"reduction must be 'mean', 'batchmean' or 'none', got {reduction!r}")
        self.beta = beta
        self.reduction = reduction
        # not persistent: the weights follow from class_counts (a saved hyper-parameter), so a checkpoint
        # loads whether or not the run that tests it knows the training counts
        weight = None if class_counts is None else class_balanced_weights(class_counts, beta)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss for ``(B, C)`` logits and either ``(B,)`` class indices or ``(B, C)`` distributions (-> plurality)."""
        if target.ndim == 2:
            target = dominant_class(target)  # ties toward the first class, as labels.plurality
        weight = None if self.weight is None else self.weight.to(logits.dtype)
        if self.reduction == "mean":
            return F.cross_entropy(logits, target.long(), weight=weight)
        per_sample = F.cross_entropy(logits, target.long(), weight=weight, reduction="none")  # w_y·nll
        return per_sample if self.reduction == "none" else per_sample.mean()


def soft_class_balanced_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Per-sample -Σ_c w_c q_c log softmax(logits)_c, ``(B, C) -> (B,)``; no weight gives the soft-target CE.

    The authors' soft CB-CE (``train_ser.py``, ``SerBrain.compute_objectives``, cbce branch with soft targets).
    """
    logp = logits.log_softmax(-1)
    weighted = target * logp if weight is None else target * logp * weight.to(logp.dtype)
    return -weighted.sum(-1)


class SoftClassBalancedCrossEntropyLoss(nn.Module):
    """Cross-entropy against target distributions, each class's term scaled by its class-balanced weight.

    Args:
        class_counts: training samples per class; None gives the plain soft-target cross-entropy.
        beta: the effective-number hyper-parameter β (the authors': 0.9999).
        reduction: ``mean`` over the batch (the authors') or ``none`` for the per-sample ``(B,)`` losses.
    """

    def __init__(
        self,
        class_counts: Sequence[float] | None = None,
        beta: float = 0.9999,
        reduction: Literal["mean", "none"] = "mean",
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        self.beta = beta
        self.reduction = reduction
        weight = None if class_counts is None else class_balanced_weights(class_counts, beta)
        self.register_buffer("weight", weight, persistent=False)  # follows from class_counts, as above

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss for ``(B, C)`` logits and ``(B, C)`` target distributions."""
        per_sample = soft_class_balanced_cross_entropy(logits, target, self.weight)
        return per_sample if self.reduction == "none" else per_sample.mean()
