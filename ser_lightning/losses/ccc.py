"""Concordance correlation coefficient loss for valence / arousal / dominance regression."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def concordance_cc(preds: Tensor, target: Tensor) -> Tensor:
    """Per-dimension CCC = 2 cov / (var_p + var_t + (μ_p - μ_t)²) over the batch, ``(B, D) -> (D,)``."""
    mp, mt = preds.mean(0), target.mean(0)
    vp, vt = preds.var(0, unbiased=False), target.var(0, unbiased=False)
    cov = ((preds - mp) * (target - mt)).mean(0)
    return 2 * cov / (vp + vt + (mp - mt) ** 2).clamp_min(1e-8)


class CCCLoss(nn.Module):
    """1 - mean CCC over dimensions; rows with a NaN target (missing VAD) are left out per dimension."""

    def forward(self, preds: Tensor, target: Tensor) -> Tensor:
        """Loss for ``(B, D)`` predictions and targets."""
        losses = []
        for d in range(preds.shape[-1]):
            valid = torch.isfinite(target[:, d])
            if valid.sum() >= 2:
                losses.append(1 - concordance_cc(preds[valid, d : d + 1], target[valid, d : d + 1])[0])
        if not losses:
            return preds.sum() * 0.0
        return torch.stack(losses).mean()
