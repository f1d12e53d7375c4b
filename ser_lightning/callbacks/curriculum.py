"""The entropy curriculum as a Lightning callback (paper 004; its authors' ``utils/entropy_curriculum.py``).

At the start of every training epoch the callback sets ``pl_module.curriculum`` to that epoch's
:class:`~ser_lightning.losses.curriculum.CurriculumSetting`; the module's ``training_loss`` reads it and weights its
per-sample classification loss with :func:`~ser_lightning.losses.curriculum.curriculum_loss`. The callback counts,
from each training batch's ``entropy``, the samples the setting keeps (before the empty-batch fallback, as the
authors' ``keep_frac``), sums the counts over ranks at the end of the epoch and logs ``train/curriculum/threshold``
(filter modes) or ``train/curriculum/alpha`` (weight modes), ``train/curriculum/kept_fraction`` and
``train/curriculum/active``; weight modes add ``train/curriculum/at_min_weight_fraction`` (their
``frac_at_min_weight``). Every rank applies the same schedule: it depends on the epoch only. The state (settings,
epoch, counts) goes into the checkpoint, so a resumed run continues the schedule and, mid-epoch, the counts.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from ser_lightning.labels import normalized_entropy
from ser_lightning.losses.curriculum import (
    WEIGHT_MODES,
    CurriculumMode,
    CurriculumSetting,
    EntropyCurriculumSchedule,
    curriculum_keep,
    curriculum_weights,
)


class EntropyCurriculum(L.Callback):
    """Sets each epoch's entropy-curriculum setting on the module and logs it (defaults: the authors' YAML).

    Args:
        mode: ``filter``, ``filter_rev``, ``weight`` or ``weight_rev``.
        warmup_epochs: epochs without curriculum at the start (Lightning epochs 0 .. warmup_epochs - 1).
        ramp_epochs: epochs over which the threshold / α move from start to end value.
        start_threshold: filter modes' threshold on normalised entropy on the first epoch after warm-up.
        end_threshold: filter modes' threshold at the end of the ramp.
        alpha_start: weight modes' exponent on the first epoch after warm-up.
        alpha_end: weight modes' exponent at the end of the ramp.
        min_weight: weight modes' lower clamp of a sample's weight.
        entropy_key: the batch key of the label entropy in nats (normalised here by log ``pl_module.num_classes``).
    """

    def __init__(
        self,
        mode: CurriculumMode = "filter",
        warmup_epochs: int = 5,
        ramp_epochs: int = 6,
        start_threshold: float = 0.5,
        end_threshold: float = 0.95,
        alpha_start: float = 2.0,
        alpha_end: float = 0.0,
        min_weight: float = 0.15,
        entropy_key: str = "entropy",
    ) -> None:
        self.schedule = EntropyCurriculumSchedule(
            mode, warmup_epochs, ramp_epochs, start_threshold, end_threshold, alpha_start, alpha_end, min_weight
        )
        self.entropy_key = entropy_key
        self.setting: CurriculumSetting | None = None
        self.epoch = -1  # the epoch whose counts are held
        self._counts = torch.zeros(3, dtype=torch.float64)  # kept, seen, at the minimum weight

    # -- hooks ---------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Compute the epoch's setting, hand it to the module, and start counting (unless resumed mid-epoch)."""
        epoch = trainer.current_epoch
        if epoch != self.epoch:
            self._counts = torch.zeros(3, dtype=torch.float64)
            self.epoch = epoch
        self.setting = self.schedule.at(epoch)
        pl_module.curriculum = self.setting

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Count the batch's kept samples (and, in weight modes, those at the minimum weight)."""
        h = normalized_entropy(batch[self.entropy_key].detach(), pl_module.num_classes)
        keep = curriculum_keep(h, self.setting)
        counts = [keep.sum(), torch.tensor(keep.numel(), device=h.device)]
        setting = self.setting
        if setting is not None and setting.active and setting.mode in WEIGHT_MODES:
            at_min = keep & (curriculum_weights(h, setting) <= setting.min_weight + 1e-12)
            counts.append(at_min.sum())
        else:
            counts.append(torch.zeros((), device=h.device))
        self._counts = self._counts.to(h.device) + torch.stack([c.double() for c in counts])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the epoch's threshold or α and the kept fraction, counts summed over all ranks."""
        setting = self.setting or self.schedule.at(trainer.current_epoch)
        # a copy: the reduce sums in place, and on CPU .to() would hand over our own per-rank tally
        counts = trainer.strategy.reduce(self._counts.to(pl_module.device).clone(), reduce_op="sum")
        seen = counts[1].clamp_min(1.0)
        metrics = {"train/curriculum/active": float(setting.active), "train/curriculum/kept_fraction": counts[0] / seen}
        if setting.mode in WEIGHT_MODES:
            metrics["train/curriculum/alpha"] = setting.effective_alpha
            metrics["train/curriculum/at_min_weight_fraction"] = counts[2] / seen
        else:
            metrics["train/curriculum/threshold"] = setting.effective_threshold
        # already summed over ranks, so every rank holds the same numbers: sync_dist's mean leaves them as they are
        values = {k: torch.as_tensor(v, dtype=torch.float32, device=pl_module.device) for k, v in metrics.items()}
        pl_module.log_dict(values, on_epoch=True, sync_dist=True)

    # -- checkpoint ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The settings, the epoch counted and its counts (kept, seen, at the minimum weight)."""
        return {"schedule": asdict(self.schedule), "epoch": self.epoch, "counts": self._counts.cpu().tolist()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the epoch and counts; the settings given now win over a checkpoint's different ones (warned).

        Lightning saves rank 0's callback state, so after a mid-epoch resume under DDP that one epoch's kept
        fraction starts from rank 0's counts on every rank (approximate); end-of-epoch checkpoints are exact.
        """
        saved = state_dict.get("schedule")
        if saved is not None and saved != asdict(self.schedule):
            rank_zero_warn(f"EntropyCurriculum: the checkpoint's schedule {saved} differs from {asdict(self.schedule)}")
        self.epoch = int(state_dict.get("epoch", -1))
        self._counts = torch.tensor(state_dict.get("counts", [0.0, 0.0, 0.0]), dtype=torch.float64)
