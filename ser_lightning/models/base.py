"""What every distribution-predicting LightningModule shares: per-split metrics, logging, figures, predictions.

A thin base (STYLE habit 11): subclasses implement ``forward(batch) -> (B, C) probabilities`` and
``training_loss(batch) -> dict``; everything a researcher reads in TensorBoard is produced here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from ser_lightning.metrics import AmbiguityBinnedMetrics
from ser_lightning.metrics.functional.probability import entropy
from ser_lightning.models.figures import bin_bar_chart, confusion_figure

EVAL_STAGES = ("val", "test")


class DistributionModule(L.LightningModule):
    """Base of the models: evaluates the predicted distribution overall and per ambiguity bin.

    Args:
        num_classes: size of the class set (linked from the DataModule by the CLI).
        classes: class names, for figures and predictions (linked from the DataModule).
        bin_edges: inner entropy edges in nats for the per-bin metrics (the training card's tertiles).
    """

    def __init__(
        self, num_classes: int, classes: Sequence[str] | None = None, bin_edges: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.classes = list(classes) if classes else [f"class{i}" for i in range(num_classes)]
        if len(self.classes) != num_classes:
            raise ValueError(f"{len(self.classes)} class names for num_classes={num_classes}")
        edges = list(bin_edges) if bin_edges else []
        self.eval_metrics = torch.nn.ModuleDict(
            {stage: AmbiguityBinnedMetrics(num_classes, edges) for stage in EVAL_STAGES}
        )

    # -- to implement ------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> Tensor:
        """Predicted class distributions ``(B, C)`` for a collated batch."""
        raise NotImplementedError

    def training_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Loss terms for a batch; ``loss`` is the one optimised, the others are logged."""
        raise NotImplementedError

    # -- loops -------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """One optimisation step; every loss term is logged under ``train/``."""
        terms = self.training_loss(batch)
        batch_size = batch["targets"].shape[0]
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "loss"}, batch_size=batch_size)
        return terms["loss"]

    def _eval_step(self, stage: str, batch: dict[str, Any]) -> None:
        self._update_eval_metrics(stage, self(batch), batch)

    def _update_eval_metrics(self, stage: str, probs: Tensor, batch: dict[str, Any]) -> None:
        # bins follow the target entropy stored with each sample (float64 nats), not one recomputed here
        self.eval_metrics[stage].update(probs.float(), batch["targets"].float(), batch["entropy"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Accumulate validation metrics."""
        self._eval_step("val", batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Accumulate test metrics."""
        self._eval_step("test", batch)

    def on_validation_epoch_end(self) -> None:
        """Log val metrics overall and per bin, and the figures."""
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        """Log test metrics overall and per bin, and the figures."""
        self._log_eval("test")

    def _log_eval(self, stage: str) -> None:
        metric = self.eval_metrics[stage]
        if self.trainer.world_size == 1 and isinstance(metric.scores, list) and not metric.scores:
            return  # nothing was evaluated (e.g. limit_val_batches=0); under DDP every rank joins the sync
        values = metric.compute()
        # compute() is synchronised across ranks: every rank logs the same numbers
        self.log(f"{stage}/js", values["js"], prog_bar=True, sync_dist=False)
        self.log_dict({f"{stage}/{k}": v for k, v in values.items() if k != "js"}, sync_dist=False)
        if not self.trainer.sanity_checking:
            self._log_figures(stage, values, metric.confusion())
        metric.reset()

    def _log_figures(self, stage: str, values: dict[str, Tensor], confusion: Tensor) -> None:
        experiment = getattr(self.logger, "experiment", None) if self.logger else None
        if self.global_rank != 0 or not hasattr(experiment, "add_figure"):
            return
        experiment.add_figure(f"{stage}/per_bin", bin_bar_chart(values), self.global_step, close=True)
        experiment.add_figure(f"{stage}/confusion", confusion_figure(confusion.cpu(), self.classes), self.global_step)

    # -- optimisation ------------------------------------------------------------------------
    def parameter_groups(self, encoders: Sequence[nn.Module], lr: float, encoder_lr: float) -> list[dict[str, Any]]:
        """Trainable parameters as optimizer groups: everything else at ``lr``, then the encoders' at ``encoder_lr``.

        The encoder group is left out when every encoder parameter is frozen.
        """
        encoder_params = [p for enc in encoders for p in enc.parameters() if p.requires_grad]
        encoder_ids = {id(p) for p in encoder_params}
        other = [p for p in self.parameters() if p.requires_grad and id(p) not in encoder_ids]
        groups: list[dict[str, Any]] = [{"params": other, "lr": lr}]
        if encoder_params:
            groups.append({"params": encoder_params, "lr": encoder_lr})
        return groups

    # -- prediction --------------------------------------------------------------------------
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        """One record per utterance: id, classes, probabilities, entropy (nats)."""
        probs = self(batch).float()
        ent = entropy(probs)
        return [
            {"id": uid, "classes": self.classes, "probabilities": p.tolist(), "entropy": float(h)}
            for uid, p, h in zip(batch["ids"], probs.cpu(), ent.cpu(), strict=True)
        ]
