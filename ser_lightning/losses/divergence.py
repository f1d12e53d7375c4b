"""Differentiable divergences between predicted and target distributions (natural log unless told)."""

from __future__ import annotations

import math

from torch import Tensor, nn

# the one definition of each (losses -> metrics.functional)
from ser_lightning.metrics.functional.probability import entropy, js_divergence_per_item, kl_divergence_per_item

__all__ = ["JSDivergenceLoss", "KLDivergenceLoss"]


class JSDivergenceLoss(nn.Module):
    """Mean JS divergence between softmax(logits) and target distributions.

    Args:
        base: logarithm base (e: nats, as the Scaling Ambiguity code; 2: bits).
        entropy_weight: adds ``entropy_weight x`` the prediction entropy (the Scaling Ambiguity code uses 0.08).
    """

    def __init__(self, base: float = math.e, entropy_weight: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.entropy_weight = entropy_weight

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss for ``(B, C)`` logits and ``(B, C)`` target distributions."""
        probs = logits.softmax(-1)  # an underflow to exactly 0 is masked in the JS: finite gradients
        loss = js_divergence_per_item(target, probs, self.base).mean()
        if self.entropy_weight:
            loss = loss + self.entropy_weight * entropy(probs).mean()
        return loss


class KLDivergenceLoss(nn.Module):
    """Mean KL(target ‖ softmax(logits)) in nats: soft-label cross-entropy minus the target entropy."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss for ``(B, C)`` logits and ``(B, C)`` target distributions."""
        return kl_divergence_per_item(target, logits.log_softmax(-1)).mean()
