"""The one home of the torch maths on class distributions: entropy, KL, JS and the dominant class.

Losses, metrics, CB-CE and the models' predictions all call these (the numpy twins for votes live in
:mod:`ser_lightning.labels`). Every function works over the last axis and broadcasts the others. Terms with a
zero probability are masked before any logarithm (0 log 0 = 0), so neither the value nor the gradient meets a
0·∞ or 0/0: a softmax probability that underflows to exactly 0 gives finite gradients in fp32 and bf16.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TIE_ATOL = 1e-9  # probabilities within this of the largest count as tied (labels.plurality's atol)


def _masked_log(keep: Tensor, x: Tensor) -> Tensor:
    """``log x`` where ``keep``, 0 elsewhere; masked entries never reach ``log`` (no -inf, no 1/0 gradient)."""
    return torch.where(keep, x, torch.ones_like(x)).log()


def _sum_p_log_ratio(p: Tensor, log_q: Tensor) -> Tensor:
    """Σ_c p_c (log p_c - log q_c), a term with p_c = 0 being 0; ``log_q`` is read only where p_c > 0."""
    shape = torch.broadcast_shapes(p.shape, log_q.shape)
    p, log_q = p.expand(shape), log_q.expand(shape)
    keep = p > 0
    return (p * (_masked_log(keep, p) - torch.where(keep, log_q, torch.zeros_like(log_q)))).sum(-1)


def entropy(p: Tensor, base: float = math.e) -> Tensor:
    """Shannon entropy -Σ p log p per row, ``(..., C) -> (...)``, in nats unless ``base`` says otherwise."""
    keep = p > 0
    return -(p * _masked_log(keep, p)).sum(-1) / math.log(base)


def kl_divergence_per_item(p: Tensor, log_q: Tensor, base: float = math.e) -> Tensor:
    """KL(p ‖ q) = Σ p (log p - log q) per row from q's log-probabilities (e.g. a log_softmax), ``(..., C) -> (...)``.

    Rounding can leave it a hair below 0 when p ≈ q; it is clamped at 0 (where its gradient is 0 anyway).
    """
    return (_sum_p_log_ratio(p, log_q) / math.log(base)).clamp_min(0.0)


def js_divergence_per_item(p: Tensor, q: Tensor, base: float = math.e) -> Tensor:
    """Jensen-Shannon divergence ½KL(p‖m) + ½KL(q‖m), m = ½(p + q), per row, ``(..., C) -> (...)``.

    Symmetric, finite for zeros and in [0, log 2 / log base]: ``base`` 2 gives the metrics' bits in [0, 1],
    e the losses' nats. Rounding below 0 (p ≈ q) is clamped at 0.
    """
    m = 0.5 * (p + q)
    log_m = _masked_log(m > 0, m)  # m > 0 wherever p > 0 or q > 0, the only terms that read it
    js = 0.5 * (_sum_p_log_ratio(p, log_m) + _sum_p_log_ratio(q, log_m))
    return (js / math.log(base)).clamp_min(0.0)


def dominant_class(probs: Tensor) -> Tensor:
    """Index of the largest probability per row, ties toward the class listed first (as :func:`labels.plurality`)."""
    top = probs.max(-1, keepdim=True).values
    return (probs >= top - TIE_ATOL).int().argmax(-1)
