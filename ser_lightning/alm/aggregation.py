"""Aggregate B candidate distributions per utterance: Eq. 2-3's Dirichlet-mixture mean and verifier weighting.

Shapes: ``probs`` (N, B, C) candidate distributions, scores / log-likelihoods / ``valid`` (N, B). Computed in float64
and returned in ``probs``' dtype. A row with no usable candidate comes back as NaN (the caller substitutes its
fallback); invalid candidates' entries may hold anything, NaN included, and never leak into valid rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["candidate_mixture", "dirichlet_mixture_mean", "score_weights", "select_best"]


def _check(probs: Tensor | None, scores: Tensor, valid: Tensor | None) -> Tensor:
    """The ``valid`` mask (all True when None) after checking the shapes agree."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be (N, B), got shape {tuple(scores.shape)}")
    if probs is not None and (probs.dim() != 3 or probs.shape[:2] != scores.shape):
        raise ValueError(f"probs must be (N, B, C) with (N, B) = {tuple(scores.shape)}, got {tuple(probs.shape)}")
    if valid is None:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if valid.shape != scores.shape:
        raise ValueError(f"valid must have shape {tuple(scores.shape)}, got {tuple(valid.shape)}")
    return valid.to(device=scores.device, dtype=torch.bool)


def _masked_softmax(logits: Tensor, valid: Tensor) -> Tensor:
    """Softmax over the valid entries of each row (Eq. 2); rows without a finite valid logit -> NaN."""
    logits = logits.to(torch.float64)
    if torch.isnan(logits[valid]).any() or torch.isposinf(logits[valid]).any():
        raise ValueError("valid candidates need finite scores or -inf (weight 0); got NaN or +inf")
    masked = logits.masked_fill(~valid, float("-inf"))
    usable = torch.isfinite(masked).any(dim=1, keepdim=True)
    weights = torch.softmax(masked.masked_fill(~usable, 0.0), dim=1)
    return weights.masked_fill(~usable, float("nan"))


def candidate_mixture(probs: Tensor, weights: Tensor) -> Tensor:
    """``sum_b w_b p_b`` (N, C); zero-weight candidates contribute nothing even when their entries are NaN."""
    _check(probs, weights, None)
    w = weights.to(torch.float64).unsqueeze(-1)
    terms = torch.where(w == 0, 0.0, w * probs.to(torch.float64))
    return terms.sum(dim=1).to(probs.dtype)


def dirichlet_mixture_mean(
    probs: Tensor, log_likelihood: Tensor, valid: Tensor | None = None, tau: float = 1.0
) -> Tensor:
    """Eq. 3's mean of a Dirichlet mixture with concentrations ``tau * p_b`` and Eq. 2's softmax weights over alpha_b.

    The weights run over the valid candidates only; a valid candidate with alpha = -inf gets weight 0. ``tau``
    cancels in the mean (kept because the paper's model has it). Rows with no valid candidate are NaN.
    """
    if not tau > 0 or tau == float("inf"):
        raise ValueError(f"tau must be a positive finite number, got {tau}")
    valid = _check(probs, log_likelihood, valid)
    weights = _masked_softmax(log_likelihood, valid)  # Eq. 2: w_b = exp(alpha_b) / sum_j exp(alpha_j)
    beta = tau * probs.to(torch.float64)  # concentrations beta_b = tau * p_b
    totals = beta.sum(dim=-1, keepdim=True)
    if (totals[valid] <= 0).any() or not torch.isfinite(totals[valid]).all():
        raise ValueError("valid candidates must be distributions with a positive, finite sum")
    means = torch.where(valid.unsqueeze(-1), beta / totals, 0.0)  # Eq. 3: E_Dir(beta_b)[p] = beta_b / sum_k beta_bk
    return candidate_mixture(means, weights).to(probs.dtype)


def score_weights(scores: Tensor, valid: Tensor | None = None, mode: str = "normalised") -> Tensor:
    """Weights (N, B) from verifier scores in [0, 1]: ``s_b / sum s`` ("normalised") or Eq. 2's softmax ("softmax").

    Invalid candidates get weight 0; a "normalised" row whose valid scores are all 0 is uniform over its valid
    candidates; a row with no valid candidate is NaN.
    """
    valid = _check(None, scores, valid)
    s = scores.to(torch.float64)
    if ((s[valid] < 0) | (s[valid] > 1) | torch.isnan(s[valid])).any():
        raise ValueError("verifier scores of valid candidates must lie in [0, 1]")
    if mode == "softmax":
        return _masked_softmax(s, valid)  # Eq. 2 with the scores in place of alpha_b
    if mode != "normalised":
        raise ValueError(f"mode must be 'normalised' or 'softmax', got {mode!r}")
    s = s.masked_fill(~valid, 0.0)
    total = s.sum(dim=1, keepdim=True)
    count = valid.sum(dim=1, keepdim=True).to(torch.float64)
    uniform = valid.to(torch.float64) / count
    weights = torch.where(total > 0, s / total.clamp_min(torch.finfo(torch.float64).tiny), uniform)
    return weights.masked_fill(count == 0, float("nan"))


def select_best(probs: Tensor, scores: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The valid candidate with the highest score per row (ties -> lowest index) and its index (-1 and NaN if none)."""
    valid = _check(probs, scores, valid)
    s = scores.to(torch.float64)
    if torch.isnan(s[valid]).any():
        raise ValueError("valid candidates need a score, got NaN")
    best = s.masked_fill(~valid, float("-inf")).amax(dim=1, keepdim=True)
    positions = torch.arange(s.shape[1], device=s.device).expand_as(s)
    ties = valid & (s == best)
    index = torch.where(ties, positions, s.shape[1]).amin(dim=1)
    found = index < s.shape[1]
    index = torch.where(found, index, -1)
    rows = torch.arange(s.shape[0], device=s.device)
    chosen = probs[rows, index.clamp_min(0)].to(torch.float64)
    chosen = chosen.masked_fill(~found.unsqueeze(-1), float("nan"))
    return chosen.to(probs.dtype), index
