"""Losses as small nn.Modules named after the papers' terms."""

from ser_lightning.losses.amber2 import AmbER2Loss, expert_weights, mai_loss, rai_loss
from ser_lightning.losses.cbce import ClassBalancedCrossEntropyLoss, class_balanced_weights
from ser_lightning.losses.ccc import CCCLoss, concordance_cc
from ser_lightning.losses.divergence import JSDivergenceLoss, KLDivergenceLoss, js_divergence, kl_divergence

__all__ = [
    "AmbER2Loss",
    "CCCLoss",
    "ClassBalancedCrossEntropyLoss",
    "JSDivergenceLoss",
    "KLDivergenceLoss",
    "class_balanced_weights",
    "concordance_cc",
    "expert_weights",
    "js_divergence",
    "kl_divergence",
    "mai_loss",
    "rai_loss",
]
