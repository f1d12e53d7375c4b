"""The NewBob learning-rate schedule (paper 004 Sec. 3.1: threshold 0.0025, annealing factor 0.9).

NewBob compares each validation loss with the *previous* epoch's, not with the best so far as
``ReduceLROnPlateau`` does: ``improvement = (previous - current) / previous``; when it is below the threshold the
rate is multiplied by the factor (after ``patient`` further such epochs). This is SpeechBrain's
``speechbrain.nnet.schedulers.NewBobScheduler.__call__``, which paper 004's authors run twice, once for the
backbone's and once for the heads' rate (``hparams/wavlm_ser_example.yaml``: ``lr_annealing``,
``lr_annealing_ssl``; ``train_ser.py`` ``on_stage_end``). Both see the same validation loss with the same
settings, so here one scheduler keeps each parameter group's own value and anneals them together.

As in ``train_ser.py``, the scheduler *sets* every group's rate to its own value after each validation
(``_set_group_lr``): a change made to a group's rate during an epoch (a gradual-unfreezing step's factor) lasts
until the next validation.
"""

from __future__ import annotations

import math
from typing import Any, SupportsFloat

from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau


class NewBobScheduler(ReduceLROnPlateau):
    """NewBob annealing of every parameter group's rate on a validation loss (lower is better).

    A ``ReduceLROnPlateau`` subclass only so that Lightning hands it the monitored value at each validation
    (``reduce_on_plateau``); its decisions are NewBob's. Its state (each group's value, the previous loss, the
    patience left) is in ``state_dict`` and so in every checkpoint.

    Args:
        optimizer: the optimizer whose groups' rates are annealed; each group starts from its current ``lr``.
        threshold: relative improvement over the previous loss below which the rate is annealed (theirs: 0.0025).
        factor: the annealing factor (theirs: 0.9).
        patient: further epochs below the threshold tolerated before annealing (theirs: 0).
    """

    def __init__(self, optimizer: Optimizer, threshold: float = 0.0025, factor: float = 0.9, patient: int = 0) -> None:
        if not 0.0 < factor <= 1.0:
            raise ValueError(f"factor must be in (0, 1], got {factor}")
        if patient < 0:
            raise ValueError(f"patient must be >= 0, got {patient}")
        super().__init__(optimizer, mode="min", factor=factor, patience=patient, threshold=threshold)
        self.newbob_threshold = float(threshold)
        self.newbob_factor = float(factor)
        self.patient = int(patient)
        self.patient_left = int(patient)
        self.values = [float(group["lr"]) for group in optimizer.param_groups]
        self.previous: float | None = None
        self.annealed = 0  # how many times the rates were annealed

    def decide(self, current: float) -> bool:
        """Record ``current`` and say whether the rates are annealed now (NewBob's rule, see the module docstring)."""
        anneal = False
        if self.previous is not None:
            improvement = 0.0 if self.previous == 0 else (self.previous - current) / self.previous
            if improvement < self.newbob_threshold:  # a NaN loss gives a NaN improvement: no decision
                if self.patient_left == 0:
                    anneal = True
                    self.patient_left = self.patient
                else:
                    self.patient_left -= 1
        if not math.isnan(current):
            self.previous = current
        return anneal

    def step(self, metrics: SupportsFloat, epoch: Any = None) -> None:  # type: ignore[override]
        """Take the epoch's validation loss, anneal the values if NewBob says so, and set every group's rate."""
        self.last_epoch = self.last_epoch + 1 if epoch is None else int(epoch)
        if self.decide(float(metrics)):
            self.values = [v * self.newbob_factor for v in self.values]
            self.annealed += 1
        for group, value in zip(self.optimizer.param_groups, self.values, strict=True):
            group["lr"] = value
        self._last_lr = [float(group["lr"]) for group in self.optimizer.param_groups]
