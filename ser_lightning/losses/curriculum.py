"""The entropy curriculum's schedule and per-sample weights (paper 004; its authors' ``utils/entropy_curriculum.py``).

Pure maths, no Lightning: :class:`EntropyCurriculumSchedule` gives each epoch's :class:`CurriculumSetting`,
:func:`curriculum_weights` turns a batch's normalised label entropies into per-sample weights, and
:func:`curriculum_loss` is the weighted mean of a per-sample classification loss. The Lightning side (the callback
that sets ``pl_module.curriculum`` each epoch and logs it) is :mod:`ser_lightning.callbacks.curriculum`.

Epochs. The authors count epochs from 1 (SpeechBrain's ``EpochCounter``): epoch e is warm-up (no curriculum) when
``e <= warmup``, otherwise its progress is ``t = clamp((e - warmup - 1) / (ramp - 1), 0, 1)`` (t = 1 when
``ramp <= 1``). Lightning counts from 0, so e = epoch + 1: epoch is warm-up when ``epoch < warmup`` and
``t = clamp((epoch - warmup) / (ramp - 1), 0, 1)``. With their defaults (warm-up 5, ramp 6), Lightning epochs 0-4
are warm-up, 5-10 ramp the threshold 0.5, 0.59, 0.68, 0.77, 0.86, 0.95 (α 2, 1.6, 1.2, 0.8, 0.4, 0) and later
epochs keep the end value.

Modes (``train_ser.py``, ``SerBrain.compute_objectives``, curriculum block): ``filter`` keeps the samples with
H_norm <= threshold and ``filter_rev`` those with H_norm >= threshold; a batch that keeps none falls back to the
whole batch. ``weight`` weights a sample by clamp((1 - H_norm)^α, min_w, 1) and ``weight_rev`` by
clamp(max(H_norm, 1e-8)^α, min_w, 1); the loss is Σ w·l / Σ w (theirs: mean of w / mean(w) x l, the same), with
uniform weights if their mean is <= 1e-8. H_norm is the label entropy / log C clamped to [0, 1] (theirs: the
merged distribution's, ``ambiguity_signal_key: emo_entropy_norm_merged``). A sample whose entropy is not finite
(no votes) is never kept and weighs 0. Their optional quantile schedule is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

CurriculumMode = Literal["filter", "filter_rev", "weight", "weight_rev"]
FILTER_MODES = ("filter", "filter_rev")
WEIGHT_MODES = ("weight", "weight_rev")
_MIN_MEAN_WEIGHT = 1e-8  # train_ser.py: weights whose mean is at or below this fall back to uniform


@dataclass(frozen=True)
class CurriculumSetting:
    """One epoch's curriculum: off during warm-up; else a threshold (filter modes) or α and min_w (weight modes)."""

    mode: CurriculumMode
    active: bool
    threshold: float | None = None
    alpha: float | None = None
    min_weight: float | None = None

    @property
    def effective_threshold(self) -> float:
        """The threshold in force: during warm-up the one that keeps everything (1 for filter, 0 for filter_rev)."""
        if self.active and self.threshold is not None:
            return self.threshold
        return 0.0 if self.mode == "filter_rev" else 1.0

    @property
    def effective_alpha(self) -> float:
        """The α in force: 0 (all weights 1) during warm-up."""
        return self.alpha if self.active and self.alpha is not None else 0.0


@dataclass(frozen=True)
class EntropyCurriculumSchedule:
    """The curriculum's settings (defaults: the authors' ``hparams/wavlm_ser_example.yaml``) and its per-epoch values.

    Args:
        mode: ``filter``, ``filter_rev``, ``weight`` or ``weight_rev``.
        warmup_epochs: epochs without curriculum at the start.
        ramp_epochs: epochs over which the threshold / α move from start to end value.
        start_threshold: filter modes' threshold on the first epoch after warm-up.
        end_threshold: filter modes' threshold at the end of the ramp.
        alpha_start: weight modes' exponent on the first epoch after warm-up.
        alpha_end: weight modes' exponent at the end of the ramp.
        min_weight: weight modes' lower clamp of a sample's weight.
    """

    mode: CurriculumMode = "filter"
    warmup_epochs: int = 5
    ramp_epochs: int = 6
    start_threshold: float = 0.5
    end_threshold: float = 0.95
    alpha_start: float = 2.0
    alpha_end: float = 0.0
    min_weight: float = 0.15

    def __post_init__(self) -> None:
        """Refuse unknown modes and negative epoch counts."""
        if self.mode not in get_args(CurriculumMode):
            raise ValueError(f"mode must be one of {get_args(CurriculumMode)}, got {self.mode!r}")
        if self.warmup_epochs < 0 or self.ramp_epochs < 0:
            raise ValueError(f"epoch counts must be >= 0, got {self.warmup_epochs} and {self.ramp_epochs}")
        if not 0.0 <= self.min_weight <= 1.0:
            raise ValueError(f"min_weight must be in [0, 1], got {self.min_weight}")

    def progress(self, epoch: int) -> float | None:
        """Ramp progress t in [0, 1] of a 0-based Lightning epoch, None during warm-up (see the module docstring)."""
        if epoch < self.warmup_epochs:  # theirs: 1-based e <= warmup
            return None
        if self.ramp_epochs <= 1:
            return 1.0
        return min(1.0, max(0.0, (epoch - self.warmup_epochs) / (self.ramp_epochs - 1)))

    def at(self, epoch: int) -> CurriculumSetting:
        """The setting of a 0-based Lightning epoch (``entropy_curriculum.py``, ``_entropy_curriculum_policy``)."""
        t = self.progress(epoch)
        if t is None:
            return CurriculumSetting(self.mode, active=False)
        if self.mode in FILTER_MODES:
            threshold = self.start_threshold + t * (self.end_threshold - self.start_threshold)
            return CurriculumSetting(self.mode, active=True, threshold=threshold)
        alpha = self.alpha_start + t * (self.alpha_end - self.alpha_start)
        return CurriculumSetting(self.mode, active=True, alpha=alpha, min_weight=self.min_weight)


def curriculum_keep(h_norm: Tensor, setting: CurriculumSetting | None) -> Tensor:
    """Which samples the setting keeps, ``(B,)`` bool, before any fallback: what the kept fraction counts.

    Off (None or warm-up): all. Filter modes: the threshold test. Weight modes: the finite entropies (weight > 0).
    """
    finite = torch.isfinite(h_norm)
    if setting is None or not setting.active:
        return torch.ones_like(finite)
    if setting.mode == "filter":
        return finite & (h_norm <= setting.threshold)
    if setting.mode == "filter_rev":
        return finite & (h_norm >= setting.threshold)
    return finite


def curriculum_weights(h_norm: Tensor, setting: CurriculumSetting | None) -> Tensor:
    """Per-sample weights ``(B,)``: a 0/1 mask for filter modes (all ones if it keeps none), clamped powers for weights.

    Off (None or warm-up): ones. The weights are not normalised: :func:`weighted_batch_mean` divides by their sum.
    """
    ones = torch.ones_like(h_norm, dtype=torch.float32 if not h_norm.is_floating_point() else h_norm.dtype)
    if setting is None or not setting.active:
        return ones
    keep = curriculum_keep(h_norm, setting)
    if setting.mode in FILTER_MODES:
        return torch.where(keep.any(), keep.to(ones.dtype), ones)  # train_ser.py: keep.any() else whole batch
    h = torch.where(keep, h_norm, torch.zeros_like(h_norm))
    base = h.clamp(1e-8, 1.0) if setting.mode == "weight_rev" else 1.0 - h
    w = base.pow(setting.alpha).clamp(setting.min_weight, 1.0)
    w = torch.where(keep, w, torch.zeros_like(w))
    return torch.where(w.mean() > _MIN_MEAN_WEIGHT, w, ones)


def weighted_batch_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Σ w·v / Σ w over the batch; a sample of weight 0 adds nothing, even a non-finite value."""
    weights = weights.to(values.dtype)
    terms = torch.where(weights > 0, weights * values, torch.zeros_like(values))
    return terms.sum() / weights.sum()


def curriculum_loss(per_sample: Tensor, h_norm: Tensor, setting: CurriculumSetting | None) -> Tensor:
    """The classification loss under the setting: the weighted mean of ``per_sample`` ``(B,)``; off: its mean."""
    if setting is None or not setting.active:
        return per_sample.mean()
    return weighted_batch_mean(per_sample, curriculum_weights(h_norm, setting))
