"""The entropy-curriculum authors' valence / arousal / dominance objective: Gaussian NLL + 0.1 x (1 - CCC).

Follows ``train_ser.py`` (``SerBrain.compute_objectives``, VAD branch) of ``zahraomidi/MSP-PODCAST_WavLM``: the head
predicts a mean and a log-variance per dimension; the loss is the heteroscedastic Gaussian NLL
½(e^{-s}(μ - y)² + s) with s clamped to [-10, 10], each dimension's term scaled by its weight ([1.4, 1, 1]) and
averaged over the batch x 3 entries, plus ``ccc_weight`` x (1 - the weight-averaged CCC), clamped at 0, with CCC
from population (biased) moments and ε = 1e-8 in the denominator (their ``utils/model_utils.py``, ``concordance_cc``).
Targets are the corpus ratings mapped by :func:`scale_vad_targets`. The task weight (their ``lambda_vad`` = 0.3)
belongs to the model. A missing rating (NaN target) is left out of both terms; theirs has none to leave out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

VAD_DIM_WEIGHTS = (1.4, 1.0, 1.0)  # valence, arousal, dominance: hparams/wavlm_ser_example.yaml vad_dim_weights


def scale_vad_targets(vad: Tensor, center: float = 4.0, half_range: float = 2.0) -> Tensor:
    """Ratings -> (vad - center) / half_range clamped to [-1, 1]; NaN (a missing rating) stays NaN.

    The defaults are the authors' ``neg1_1`` map of MSP-Podcast's 1-7 ratings (``dataio_msp_podcast.py``,
    ``_scale_vad``): (u - 4) / 2, so ratings below 2 or above 6 saturate at -1 / 1. ``half_range=3`` maps
    the whole 1-7 scale linearly instead.
    """
    if half_range <= 0:
        raise ValueError(f"half_range must be > 0, got {half_range}")
    return ((vad - center) / half_range).clamp(-1.0, 1.0)  # clamp keeps NaN


def gaussian_nll_terms(mean: Tensor, log_var: Tensor, target: Tensor) -> Tensor:
    """Per-entry ½(e^{-s}(μ - y)² + s), ``(B, D)``; 0 where the target is NaN (and no NaN in the gradient)."""
    valid = torch.isfinite(target)
    err = mean - torch.where(valid, target, mean.detach())
    nll = 0.5 * (torch.exp(-log_var) * err.square() + log_var)
    return torch.where(valid, nll, torch.zeros_like(nll))


def masked_concordance_cc(preds: Tensor, target: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Per-dimension CCC over the rated rows, ``(B, D) -> (D,)``, and the number of rated rows per dimension.

    2cov / (var_p + var_t + (μ_p - μ_t)² + ε) with population moments, as the authors' ``concordance_cc``;
    a dimension with no rated row gets 0.
    """
    valid = torch.isfinite(target)
    w = valid.to(preds.dtype)
    n = w.sum(0)
    denom = n.clamp_min(1.0)
    t = torch.where(valid, target, torch.zeros_like(target))
    mp, mt = (preds * w).sum(0) / denom, (t * w).sum(0) / denom
    dp, dt = (preds - mp) * w, (t - mt) * w
    cov = (dp * dt).sum(0) / denom
    var_p, var_t = dp.square().sum(0) / denom, dt.square().sum(0) / denom
    return 2 * cov / (var_p + var_t + (mp - mt).square() + eps), n


class GaussianNLLCCCLoss(nn.Module):
    """Heteroscedastic Gaussian NLL + ``ccc_weight`` x (1 - weighted CCC) on scaled VAD targets.

    Args:
        dim_weights: per-dimension weights of both terms (the authors': 1.4, 1, 1).
        ccc_weight: weight of the 1 - CCC term (their ``lambda_ccc``: 0.1); 0 leaves the NLL alone.
        log_var_min: lower clamp of the predicted log-variance (their ``logvar_clip_min``).
        log_var_max: upper clamp of the predicted log-variance (their ``logvar_clip_max``).
    """

    def __init__(
        self,
        dim_weights: Sequence[float] = VAD_DIM_WEIGHTS,
        ccc_weight: float = 0.1,
        log_var_min: float = -10.0,
        log_var_max: float = 10.0,
    ) -> None:
        super().__init__()
        if log_var_min >= log_var_max:
            raise ValueError(f"log_var_min must be < log_var_max, got {log_var_min} and {log_var_max}")
        self.ccc_weight = ccc_weight
        self.log_var_min, self.log_var_max = log_var_min, log_var_max
        self.register_buffer("dim_weights", torch.tensor(list(dim_weights), dtype=torch.float32), persistent=False)

    def forward(self, mean: Tensor, log_var: Tensor, target: Tensor) -> dict[str, Tensor]:
        """``loss``, ``nll`` and ``ccc_loss`` (1 - weighted CCC) for ``(B, D)`` means, log-variances and targets.

        The NLL is Σ w_d·nll over the rated entries / their number (the authors' mean over B x D when all are
        rated). The CCC term averages, with the weights, the dimensions that have at least 2 rated rows.
        Computed in float32 at least (theirs is float32).
        """
        dtype = torch.promote_types(mean.dtype, torch.float32)
        mean, target = mean.to(dtype), target.to(dtype)
        log_var = log_var.to(dtype).clamp(self.log_var_min, self.log_var_max)  # train_ser.py: clamp before NLL
        w = self.dim_weights.to(dtype)
        valid = torch.isfinite(target)
        nll = (gaussian_nll_terms(mean, log_var, target) * w).sum() / valid.sum().clamp_min(1)
        ccc_loss = mean.sum() * 0.0
        if self.ccc_weight:
            ccc, n = masked_concordance_cc(mean, target)
            present = (n >= 2).to(dtype)
            if present.any():
                ccc_loss = (1 - (ccc * w * present).sum() / (w * present).sum()).clamp_min(0.0)
        return {"loss": nll + self.ccc_weight * ccc_loss, "nll": nll, "ccc_loss": ccc_loss}
