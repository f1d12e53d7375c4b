"""Class-weighted KL divergence (WKLD), the entropy-curriculum authors' soft-target loss with per-class weights.

Follows ``train_ser.py`` of ``zahraomidi/MSP-PODCAST_WavLM`` (``SerBrain.on_fit_start``, ``kld_weighting`` block,
and ``compute_objectives``, kld branch): each class's term q_c (log q_c - log p_c) is scaled by w_c before the sum
over classes, then averaged over the batch. The weights are inverse class frequencies to a power, normalised to
mean 1 (or sum C) and clamped to [0.25, 5] by default (``hparams/wavlm_ser_example.yaml``, ``kld_weighting``).
Unlike KL, the weighted sum can be negative for a sample; like theirs, it is not clamped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn


def inverse_frequency_weights(
    class_counts: Sequence[float],
    power: float = 1.0,
    normalize: Literal["mean", "sum", "none"] = "mean",
    min_weight: float = 0.25,
    max_weight: float = 5.0,
) -> Tensor:
    """Per-class (1 / max(n_c, 1))^power, normalised to mean 1 (``mean``) or sum C (``sum``), then clamped."""
    if normalize not in ("mean", "sum", "none"):
        raise ValueError(f"normalize must be 'mean', 'sum' or 'none', got {normalize!r}")
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64).clamp_min(1.0)
    w = (1.0 / counts).pow(power)
    if normalize != "none":
        w = w / w.mean()  # mean 1 is sum C: the two normalisations agree
    return w.clamp(min_weight, max_weight).float()


def weighted_kl_divergence(target: Tensor, log_probs: Tensor, weight: Tensor) -> Tensor:
    """Per-sample Σ_c w_c q_c (log q_c - log p_c), ``(B, C) -> (B,)``; a class with q_c = 0 adds 0."""
    keep = target > 0
    log_q = torch.where(keep, target, torch.ones_like(target)).log()
    terms = torch.where(keep, target * (log_q - log_probs), torch.zeros_like(target))
    return (terms * weight.to(terms.dtype)).sum(-1)


class ClassWeightedKLDivergenceLoss(nn.Module):
    """KL(target ‖ softmax(logits)) with each class's term weighted (WKLD).

    Args:
        class_counts: training samples per class, for inverse-frequency weights.
        weights: explicit per-class weights instead (their ``mode: weights``); exactly one of the two is needed.
        power: exponent of the inverse frequency.
        normalize: ``mean`` (theirs), ``sum`` or ``none``.
        min_weight: lower clamp of a class weight (theirs: 0.25).
        max_weight: upper clamp of a class weight (theirs: 5.0).
        reduction: ``mean`` over the batch (theirs) or ``none`` for the per-sample ``(B,)`` losses.
    """

    def __init__(
        self,
        class_counts: Sequence[float] | None = None,
        weights: Sequence[float] | None = None,
        power: float = 1.0,
        normalize: Literal["mean", "sum", "none"] = "mean",
        min_weight: float = 0.25,
        max_weight: float = 5.0,
        reduction: Literal["mean", "none"] = "mean",
    ) -> None:
        super().__init__()
        if (class_counts is None) == (weights is None):
            raise ValueError("give exactly one of class_counts and weights")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        self.reduction = reduction
        if weights is not None:
            weight = torch.tensor(list(weights), dtype=torch.float32)
        else:
            weight = inverse_frequency_weights(class_counts, power, normalize, min_weight, max_weight)
        self.register_buffer("weight", weight, persistent=False)  # follows from saved hyper-parameters

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss for ``(B, C)`` logits and ``(B, C)`` target distributions."""
        per_sample = weighted_kl_divergence(target, logits.log_softmax(-1), self.weight)
        return per_sample if self.reduction == "none" else per_sample.mean()
