"""The entropy-aware WavLM multitask baseline: categorical distribution + valence/arousal/dominance regression."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchmetrics.regression import ConcordanceCorrCoef

from ser_lightning.losses import CCCLoss, ClassBalancedCrossEntropyLoss, JSDivergenceLoss, KLDivergenceLoss
from ser_lightning.models.base import EVAL_STAGES, DistributionModule
from ser_lightning.nn import MLPHead

VAD_NAMES = ("valence", "arousal", "dominance")


class WavLMMultitask(DistributionModule):
    """WavLM-Base(+) encoder with a categorical head and a valence/arousal/dominance head (paper 004).

    The categorical target is chosen by two settings: the DataModule's ``label_source`` (``primary`` or
    ``merged`` votes) and ``categorical_loss`` here: ``ce`` / ``cbce`` train on the hard plurality label,
    ``kl`` / ``js`` on the vote distribution. Keeping or dropping the Other class is a class-set choice
    made when the shards are written (``ser-prepare msp-podcast --classes msp9`` or ``msp8``).

    Args:
        audio_encoder: the WavLM encoder (fine-tuned in the paper: ``freeze="feature_extractor"``).
        num_classes: size of the class set (linked from the DataModule).
        classes: class names (linked from the DataModule).
        bin_edges: entropy edges of the per-bin metrics (linked from the DataModule).
        class_counts: training plurality counts per class, for CB-CE (linked from the DataModule).
        categorical_loss: ``ce``, ``cbce``, ``kl`` or ``js``.
        vad_weight: weight of the CCC regression loss (0 turns the regression task off).
        head_hidden_dim: hidden size of both heads.
        dropout: dropout inside the heads.
        cb_beta: β of the class-balanced weights.
        encoder_lr: AdamW learning rate of the encoder (paper: 1e-5).
        head_lr: AdamW learning rate of the heads (paper: 1e-4).
        weight_decay: AdamW weight decay.
        plateau_factor: learning-rate factor when ``val/js`` stops improving (paper's NewBob: 0.9).
        plateau_threshold: relative improvement below which the rate is annealed (paper: 0.0025).
    """

    def __init__(
        self,
        audio_encoder: nn.Module,
        num_classes: int = 9,
        classes: Sequence[str] | None = None,
        bin_edges: Sequence[float] | None = None,
        class_counts: Sequence[float] | None = None,
        categorical_loss: Literal["ce", "cbce", "kl", "js"] = "kl",
        vad_weight: float = 1.0,
        head_hidden_dim: int = 256,
        dropout: float = 0.1,
        cb_beta: float = 0.999,
        encoder_lr: float = 1e-5,
        head_lr: float = 1e-4,
        weight_decay: float = 1e-2,
        plateau_factor: float = 0.9,
        plateau_threshold: float = 0.0025,
    ) -> None:
        super().__init__(num_classes, classes, bin_edges)
        self.save_hyperparameters(ignore=["audio_encoder"])
        self.audio_encoder = audio_encoder
        self.categorical_head = MLPHead(audio_encoder.output_dim, num_classes, head_hidden_dim, dropout)
        # no regression head without its loss: a head without gradients would break DDP
        self.vad_head = (
            MLPHead(audio_encoder.output_dim, len(VAD_NAMES), head_hidden_dim, dropout) if vad_weight else None
        )
        losses: dict[str, nn.Module] = {
            "ce": ClassBalancedCrossEntropyLoss(None),
            "cbce": ClassBalancedCrossEntropyLoss(class_counts, cb_beta),
            "kl": KLDivergenceLoss(),
            "js": JSDivergenceLoss(),
        }
        if categorical_loss not in losses:
            raise ValueError(f"categorical_loss must be one of {sorted(losses)}, got {categorical_loss!r}")
        self.categorical_loss = losses[categorical_loss]
        self.vad_loss = CCCLoss()
        self.vad_metrics = nn.ModuleDict(
            {stage: ConcordanceCorrCoef(num_outputs=len(VAD_NAMES)) for stage in EVAL_STAGES}
        )

    def data_requirements(self) -> dict[str, Any]:
        """Audio at the encoder's sample rate; no text."""
        return {"sample_rate": self.audio_encoder.sample_rate}

    def outputs(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """Categorical logits ``(B, C)`` and VAD predictions ``(B, 3)`` (``None`` when ``vad_weight`` is 0)."""
        h = self.audio_encoder(batch["audio"], batch["audio_mask"])
        return self.categorical_head(h), None if self.vad_head is None else self.vad_head(h)

    def forward(self, batch: dict[str, Any]) -> Tensor:
        """Predicted class distribution."""
        return self.outputs(batch)[0].softmax(-1)

    def training_loss(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Categorical loss + ``vad_weight`` x (1 - CCC) over the dimensions that are present."""
        logits, vad = self.outputs(batch)
        categorical = self.categorical_loss(logits, batch["targets"])
        terms = {"categorical": categorical.detach()}
        loss = categorical
        if vad is not None:
            vad_loss = self.vad_loss(vad, batch["vad"].to(vad.dtype))
            loss = loss + self.hparams.vad_weight * vad_loss
            terms["vad_ccc_loss"] = vad_loss.detach()
        return {"loss": loss, **terms}

    def _eval_step(self, stage: str, batch: dict[str, Any]) -> None:
        logits, vad = self.outputs(batch)
        self._update_eval_metrics(stage, logits.softmax(-1), batch)
        if vad is None:
            return
        target = batch["vad"].float()
        valid = torch.isfinite(target).all(-1)
        if valid.any():
            self.vad_metrics[stage].update(vad[valid].float(), target[valid])

    def _log_eval(self, stage: str) -> None:
        super()._log_eval(stage)
        if self.vad_head is None:
            return
        metric = self.vad_metrics[stage]
        # compute() synchronises: every rank calls it, whatever it saw (NaN when fewer than 2 rated clips)
        ccc = metric.compute() if metric.update_count or self.trainer.world_size > 1 else None
        if ccc is not None:
            self.log_dict({f"{stage}/ccc_{name}": ccc[i] for i, name in enumerate(VAD_NAMES)})
        metric.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with separate encoder and head rates, annealed on a ``val/js`` plateau (NewBob-like)."""
        hp = self.hparams
        groups = self.parameter_groups((self.audio_encoder,), hp.head_lr, hp.encoder_lr)
        optimizer = torch.optim.AdamW(groups, weight_decay=hp.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=hp.plateau_factor, threshold=hp.plateau_threshold, patience=0
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/js"}}
