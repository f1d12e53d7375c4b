"""AmbER² dual-ambiguity losses: rater (RAI) and modality (MAI) ambiguity with adaptive expert weights."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ser_lightning.metrics.functional.probability import js_divergence_per_item


def rai_loss(target: Tensor, student: Tensor, base: float = math.e) -> Tensor:
    """L_RAI = JS(y ‖ s) averaged over the batch (AmbER² Eq. 3)."""
    return js_divergence_per_item(target, student, base).mean()


def expert_weights(experts: Tensor, target: Tensor, kappa: float, base: float = math.e) -> Tensor:
    """u_m = softmax over experts of (-κ D_m), D_m = JS(p_m ‖ y), per sample (AmbER² Eq. 5).

    Args:
        experts: ``(M, B, C)`` expert distributions.
        target: ``(B, C)`` rater distributions.
        kappa: sharpness κ.
        base: logarithm base of the JS divergence.

    Returns:
        ``(M, B)`` weights summing to 1 over experts.
    """
    distances = js_divergence_per_item(experts, target.unsqueeze(0), base)
    return torch.softmax(-kappa * distances, dim=0)


def mai_loss(student: Tensor, experts: Tensor, weights: Tensor, base: float = math.e) -> Tensor:
    """L_MAI = Σ_{m≠m*} u_m JS(s ‖ p_m), averaged over the batch (AmbER² Eq. 4)."""
    return (weights * js_divergence_per_item(student.unsqueeze(0), experts, base)).sum(0).mean()


class AmbER2Loss(nn.Module):
    """L = λ_RAI L_RAI + λ_MAI L_MAI (AmbER² Eq. 6), plus the experts' own fit to the raters.

    The paper leaves two choices open; both are settings here:
    ``detach_experts`` (default True) stops the MAI term from pushing gradients into the experts, so the
    experts teach the student and are not pulled toward it; ``expert_weight`` (default 1.0) adds
    ``expert_weight x Σ_m JS(y ‖ p_m)`` so the experts themselves learn the rater distribution.

    Args:
        lambda_rai: λ_RAI (paper: 1.0).
        lambda_mai: λ_MAI (paper: 0.3, 0.5 or 0.7).
        kappa: κ of the expert weights (paper: 2, 4 or 8).
        expert_weight: weight of the experts' own JS(y ‖ p_m) terms; 0 disables them.
        detach_experts: whether the MAI term treats the experts (and u_m) as constants.
        base: logarithm base of every JS divergence (e: nats).
    """

    def __init__(
        self,
        lambda_rai: float = 1.0,
        lambda_mai: float = 0.5,
        kappa: float = 4.0,
        expert_weight: float = 1.0,
        detach_experts: bool = True,
        base: float = math.e,
    ) -> None:
        super().__init__()
        self.lambda_rai = lambda_rai
        self.lambda_mai = lambda_mai
        self.kappa = kappa
        self.expert_weight = expert_weight
        self.detach_experts = detach_experts
        self.base = base

    def forward(self, student: Tensor, experts: Mapping[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        """Loss terms for student and expert distributions (probabilities, not logits).

        Returns:
            ``loss`` (the total), ``rai``, ``mai``, ``expert`` and ``u/<name>`` (batch-mean expert weights).
        """
        names = list(experts)
        stacked = torch.stack([experts[n] for n in names])
        teacher = stacked.detach() if self.detach_experts else stacked
        weights = expert_weights(teacher, target, self.kappa, self.base)
        rai = rai_loss(target, student, self.base)
        mai = mai_loss(student, teacher, weights, self.base)
        expert = js_divergence_per_item(target.unsqueeze(0), stacked, self.base).mean(-1).sum()
        total = self.lambda_rai * rai + self.lambda_mai * mai + self.expert_weight * expert
        out = {"loss": total, "rai": rai.detach(), "mai": mai.detach(), "expert": expert.detach()}
        for name, u in zip(names, weights.detach().mean(-1), strict=True):
            out[f"u/{name}"] = u
        return out
