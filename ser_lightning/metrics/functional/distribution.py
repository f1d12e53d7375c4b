"""Per-utterance distribution metrics: JS (log 2), Bhattacharyya coefficient, R² and KL.

Each ``*_per_item`` function takes predicted and target distributions of shape ``(N, C)`` and returns
``(N,)`` scores; both inputs are renormalised in float64 first, and zero probabilities never produce NaN (a row
holding a NaN or an infinity scores NaN in every metric, never a finite-looking number). The
plain functions average over utterances, the convention of these papers' evaluation code. JS and KL are the
definitions of :mod:`ser_lightning.metrics.functional.probability`, which the losses use too.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ser_lightning.metrics.functional import probability

_EPS = 1e-10  # the evaluation code's guard for constant vectors and zero probabilities


def _check(preds: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    if preds.shape != target.shape or preds.ndim != 2:
        raise ValueError(f"preds and target must both be (N, C), got {tuple(preds.shape)} and {tuple(target.shape)}")
    if torch.any(preds < 0) or torch.any(target < 0):
        raise ValueError("distributions must be non-negative")
    # a row holding a NaN / Inf becomes all NaN, so no score (e.g. KL reading only the finite entries) looks finite
    finite = torch.isfinite(preds).all(-1, keepdim=True) & torch.isfinite(target).all(-1, keepdim=True)
    preds = torch.where(finite, preds.double(), float("nan"))
    target = torch.where(finite, target.double(), float("nan"))
    return preds / preds.sum(-1, keepdim=True).clamp_min(_EPS), target / target.sum(-1, keepdim=True).clamp_min(_EPS)


def js_divergence_bits_per_item(preds: Tensor, target: Tensor) -> Tensor:
    """Jensen-Shannon divergence in bits, in [0, 1]: ½ KL(p‖m) + ½ KL(q‖m), m = ½(p + q)."""
    p, q = _check(preds, target)
    return probability.js_divergence_per_item(p, q, base=2.0)


def bhattacharyya_coefficient_per_item(preds: Tensor, target: Tensor) -> Tensor:
    """Bhattacharyya coefficient Σ_c √(p_c q_c), in [0, 1] (1 = identical distributions)."""
    p, q = _check(preds, target)
    return torch.sqrt(p * q).sum(-1).clamp(0.0, 1.0)


def r2_per_item(preds: Tensor, target: Tensor) -> Tensor:
    """Squared Pearson correlation between the predicted and target class-probability vectors of one utterance.

    An utterance where either vector is constant scores 0 (the reference code's 1e-10 guard); one where either
    vector holds a NaN or an infinity scores NaN (not the constant-vector 0).
    """
    p, q = _check(preds, target)
    pc = p - p.mean(-1, keepdim=True)
    qc = q - q.mean(-1, keepdim=True)
    cov = (pc * qc).sum(-1)
    var = (pc**2).sum(-1) * (qc**2).sum(-1)
    r2 = torch.where(var > _EPS**2, cov**2 / var.clamp_min(_EPS**2), torch.zeros_like(cov)).clamp(0.0, 1.0)
    return torch.where(var.isnan(), var, r2)  # NaN rows (see _check) are not "constant"


def kl_divergence_nats_per_item(preds: Tensor, target: Tensor) -> Tensor:
    """KL(target ‖ pred) in nats; predicted zeros are floored at 1e-10 so the result stays finite."""
    p, q = _check(preds, target)
    return probability.kl_divergence_per_item(q, p.clamp_min(_EPS).log())


def js_divergence_bits(preds: Tensor, target: Tensor) -> Tensor:
    """Mean JS divergence (bits) over utterances."""
    return js_divergence_bits_per_item(preds, target).mean()


def bhattacharyya_coefficient(preds: Tensor, target: Tensor) -> Tensor:
    """Mean Bhattacharyya coefficient over utterances."""
    return bhattacharyya_coefficient_per_item(preds, target).mean()


def kl_divergence_nats(preds: Tensor, target: Tensor) -> Tensor:
    """Mean KL(target ‖ pred) in nats over utterances."""
    return kl_divergence_nats_per_item(preds, target).mean()


DISTRIBUTION_METRICS = {
    "js": js_divergence_bits_per_item,
    "bc": bhattacharyya_coefficient_per_item,
    "r2": r2_per_item,
    "kl": kl_divergence_nats_per_item,
}
