"""Losses as small nn.Modules named after the papers' terms."""

from ser_lightning.losses.amber2 import AmbER2Loss, expert_weights, mai_loss, rai_loss
from ser_lightning.losses.cbce import (
    ClassBalancedCrossEntropyLoss,
    SoftClassBalancedCrossEntropyLoss,
    class_balanced_weights,
    soft_class_balanced_cross_entropy,
)
from ser_lightning.losses.ccc import CCCLoss, concordance_cc
from ser_lightning.losses.curriculum import (
    CurriculumSetting,
    EntropyCurriculumSchedule,
    curriculum_keep,
    curriculum_loss,
    curriculum_weights,
    weighted_batch_mean,
)
from ser_lightning.losses.divergence import JSDivergenceLoss, KLDivergenceLoss
from ser_lightning.losses.hard_targets import neutral_guard_class
from ser_lightning.losses.vad import GaussianNLLCCCLoss, scale_vad_targets
from ser_lightning.losses.wkld import ClassWeightedKLDivergenceLoss, inverse_frequency_weights, weighted_kl_divergence

__all__ = [
    "AmbER2Loss",
    "CCCLoss",
    "ClassBalancedCrossEntropyLoss",
    "ClassWeightedKLDivergenceLoss",
    "CurriculumSetting",
    "EntropyCurriculumSchedule",
    "GaussianNLLCCCLoss",
    "JSDivergenceLoss",
    "KLDivergenceLoss",
    "SoftClassBalancedCrossEntropyLoss",
    "class_balanced_weights",
    "concordance_cc",
    "curriculum_keep",
    "curriculum_loss",
    "curriculum_weights",
    "expert_weights",
    "inverse_frequency_weights",
    "mai_loss",
    "neutral_guard_class",
    "rai_loss",
    "scale_vad_targets",
    "soft_class_balanced_cross_entropy",
    "weighted_batch_mean",
    "weighted_kl_divergence",
]
