"""Concordance correlation coefficient loss for valence / arousal / dominance regression.

The coefficient is torchmetrics' ``concordance_corrcoef``, the same definition as the ``ConcordanceCorrCoef``
metric the models log for VAD, so the loss optimises 1 - the number that is reported.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics.functional.regression import concordance_corrcoef


def concordance_cc(preds: Tensor, target: Tensor) -> Tensor:
    """Per-dimension CCC ρ_c = 2ρσ_pσ_t / (σ_p² + σ_t² + (μ_p - μ_t)²) over the batch, ``(B, D) -> (D,)``.

    torchmetrics' estimator: sample (n - 1) variances and covariance; NaN for a dimension with no spread.
    """
    return concordance_corrcoef(preds, target).reshape(preds.shape[1:])


class CCCLoss(nn.Module):
    """1 - mean CCC over dimensions, each dimension over the rows where it is rated (a NaN target is missing).

    A dimension with fewer than 2 rated rows, or whose predictions or targets do not vary over them, has no
    correlation and is left out (so no NaN reaches autograd); with none left the loss is 0. The coefficient is
    computed in float64, where torchmetrics' near-zero-variance guard cannot trip on a varying batch.
    """

    def forward(self, preds: Tensor, target: Tensor) -> Tensor:
        """Loss for ``(B, D)`` predictions and targets."""
        losses = []
        for d in range(preds.shape[-1]):
            valid = torch.isfinite(target[:, d])
            p, t = preds[valid, d : d + 1].double(), target[valid, d : d + 1].double()
            if p.shape[0] >= 2 and bool(p.max() > p.min()) and bool(t.max() > t.min()):
                losses.append(1 - concordance_cc(p, t)[0])
        if not losses:
            return preds.sum() * 0.0
        return torch.stack(losses).mean().to(preds.dtype)
