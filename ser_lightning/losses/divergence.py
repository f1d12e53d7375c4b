"""Differentiable divergences between predicted and target distributions (natural log unless told)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

_EPS = 1e-8


def js_divergence(p: Tensor, q: Tensor, base: float = math.e) -> Tensor:
    """Per-row Jensen-Shannon divergence ½KL(p‖m) + ½KL(q‖m), m = ½(p+q), shape ``(..., C) -> (...)``.

    Symmetric and finite for zeros; ``base`` 2 gives the metric's [0, 1] scale, e the losses' [0, ln 2].
    """
    m = 0.5 * (p + q)
    kl_pm = torch.xlogy(p, p) - torch.xlogy(p, m.clamp_min(_EPS))
    kl_qm = torch.xlogy(q, q) - torch.xlogy(q, m.clamp_min(_EPS))
    return 0.5 * (kl_pm + kl_qm).sum(-1) / math.log(base)


def kl_divergence(target: Tensor, log_pred: Tensor) -> Tensor:
    """Per-row KL(target ‖ pred) in nats from log-probabilities of the prediction."""
    return (torch.xlogy(target, target) - target * log_pred).sum(-1)


def prediction_entropy(probs: Tensor) -> Tensor:
    """Per-row Shannon entropy (nats) of predicted distributions."""
    return -torch.xlogy(probs, probs).sum(-1)


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
        probs = logits.softmax(-1)
        loss = js_divergence(target, probs, self.base).mean()
        if self.entropy_weight:
            loss = loss + self.entropy_weight * prediction_entropy(probs).mean()
        return loss


class KLDivergenceLoss(nn.Module):
    """Mean KL(target ‖ softmax(logits)) in nats: soft-label cross-entropy minus the target entropy."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss for ``(B, C)`` logits and ``(B, C)`` target distributions."""
        return kl_divergence(target, logits.log_softmax(-1)).mean()
