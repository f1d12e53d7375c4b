"""TensorBoard's ``hp_metric``: the best monitored value of the fit, instead of Lightning's ``-1`` placeholder."""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger


class BestAsHpMetric(Callback):
    """TensorBoard's ``hp_metric``: the checkpoint callback's best monitored value (``val/js``) at the end of fit.

    Replaces Lightning's constant ``-1`` placeholder (the CLI's logger default sets ``default_hp_metric: false``);
    logged in ``on_fit_end``, before the logger is finalised, so it lands in the fit's own event file.
    """

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the best score with the hyperparameters (TensorBoard's HPARAMS tab) and as the ``hp_metric`` scalar."""
        best = getattr(trainer.checkpoint_callback, "best_model_score", None)
        if best is None or not math.isfinite(float(best)):
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):  # log_hyperparams is rank-zero only
                logger.log_hyperparams(logger.hparams, {"hp_metric": float(best)})
