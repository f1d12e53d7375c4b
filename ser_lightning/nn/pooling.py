"""Pooling of frame- or token-level states ``(B, T, D)`` into one vector per item, over valid positions only.

Padded positions never reach the result: they are replaced by zeros with ``torch.where`` (not multiplied by
the mask, so a NaN or an infinity in padding cannot leak in) and left out of every count and softmax. A batch
of clips of different lengths therefore pools to the same vectors as each clip on its own.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _valid_mask(hidden: Tensor, mask: Tensor | None) -> Tensor:
    """Boolean ``(B, T)`` mask of valid positions; all valid when ``mask`` is ``None``."""
    if hidden.dim() != 3:
        raise ValueError(f"expected hidden states of shape (B, T, D), got {tuple(hidden.shape)}")
    if mask is None:
        return torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
    if mask.shape != hidden.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match hidden states {tuple(hidden.shape[:2])}")
    return mask.to(device=hidden.device, dtype=torch.bool)


def masked_mean(hidden: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of ``hidden`` over the valid positions of each item.

    Args:
        hidden: states of shape ``(B, T, D)``.
        mask: ``(B, T)`` with 1/``True`` on valid positions (any integer, float or bool dtype); ``None``: all
            positions are valid.

    Returns:
        ``(B, D)`` means; an item with no valid position gets zeros.
    """
    valid = _valid_mask(hidden, mask)
    summed = torch.where(valid.unsqueeze(-1), hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device))
    counts = valid.sum(dim=1, keepdim=True).clamp(min=1).to(hidden.dtype)
    return summed.sum(dim=1) / counts


class MeanPooling(nn.Module):
    """Mean over valid frames (AmbER² Sec. 4.2: "mean pooling across time"); no parameters."""

    def output_dim(self, input_dim: int) -> int:
        """Size of the pooled vector for states of size ``input_dim`` (the same)."""
        return input_dim

    def forward(self, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        """Pool ``(B, T, D)`` states over the valid positions of ``mask`` ``(B, T)`` into ``(B, D)``."""
        return masked_mean(hidden, mask)


class AttentiveStatisticsPooling(nn.Module):
    """Attention-weighted mean and standard deviation over valid frames (Okabe et al., Interspeech 2018).

    Scores ``e_t = vᵀ tanh(W h_t + b)`` are soft-maxed over the valid frames only, giving weights ``α_t``;
    the output is ``[Σ α_t h_t ; sqrt(Σ α_t h_t² − (Σ α_t h_t)²)]`` of size ``2 * dim``.
    """

    def __init__(self, dim: int, attention_dim: int = 128, eps: float = 1e-5) -> None:
        """Build the attention scorer.

        Args:
            dim: size ``D`` of the frame states.
            attention_dim: hidden size of the attention scorer.
            eps: floor of the variance before its square root (keeps the gradient finite).
        """
        super().__init__()
        if dim <= 0 or attention_dim <= 0:
            raise ValueError(f"dim and attention_dim must be positive, got {dim} and {attention_dim}")
        self.dim = dim
        self.eps = eps
        self.attention = nn.Sequential(nn.Linear(dim, attention_dim), nn.Tanh(), nn.Linear(attention_dim, 1))

    def output_dim(self, input_dim: int) -> int:
        """Size of the pooled vector (``2 * dim``); ``input_dim`` must equal ``dim``."""
        if input_dim != self.dim:
            raise ValueError(f"AttentiveStatisticsPooling was built for dim={self.dim}, not {input_dim}")
        return 2 * self.dim

    def weights(self, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attention weights ``(B, T)``: zero on padded frames, summing to 1 over each item's valid frames."""
        valid = _valid_mask(hidden, mask)
        scores = self.attention(hidden).squeeze(-1)
        scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
        return torch.softmax(scores, dim=-1) * valid.to(scores.dtype)

    def forward(self, hidden: Tensor, mask: Tensor | None = None) -> Tensor:
        """Pool ``(B, T, dim)`` states over the valid positions of ``mask`` ``(B, T)`` into ``(B, 2 * dim)``."""
        valid = _valid_mask(hidden, mask)
        hidden = torch.where(valid.unsqueeze(-1), hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device))
        alpha = self.weights(hidden, valid).unsqueeze(-1)
        mean = (alpha * hidden).sum(dim=1)
        variance = (alpha * hidden.square()).sum(dim=1) - mean.square()
        return torch.cat([mean, variance.clamp(min=self.eps).sqrt()], dim=-1)
