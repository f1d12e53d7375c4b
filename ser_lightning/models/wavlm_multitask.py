"""The entropy-aware WavLM multitask baseline: categorical distribution + valence/arousal/dominance regression.

Paper 004 ("Learning from Annotation Uncertainty: Entropy-Aware Curriculum for Speech Emotion Recognition");
where it is silent this follows its authors' ``train_ser.py`` (``SerBrain.compute_objectives``) of
``zahraomidi/MSP-PODCAST_WavLM``.

Categorical loss. ``ce`` / ``cbce`` train on a hard label (``hard_target``): ``neutral_guard`` (default), the
authors' label of the target distribution (:func:`~ser_lightning.losses.hard_targets.neutral_guard_class`: their
``y_idx``, what every hard CE / CB-CE run of theirs trains on, so paper 004's "H" rows), ``consensus``, the corpus's
consensus label (``batch["consensus"]``), or ``plurality``, the dominant class of the target distribution, ties
toward the class listed first (:func:`~ser_lightning.metrics.functional.probability.dominant_class`). Rows without a
label (-1: no consensus, or no primary votes for the guard, e.g. a DiME mix) are left out of the loss and counted as
``hard_label_missing``. ``soft_cbce`` (class-balanced
soft-target CE), ``kl``, ``wkld`` (class-weighted KL) and ``js`` (nats) train on the target distribution. Every
loss is computed per sample and reduced by the batch mean, or under the entropy curriculum by
:func:`~ser_lightning.losses.curriculum.curriculum_loss` with ``self.curriculum`` (set each epoch by the
:class:`~ser_lightning.callbacks.curriculum.EntropyCurriculum` callback; None: off). Hard losses drop the rows
without a label first, then the curriculum weighs (and, in filter modes, falls back within) the rest. A batch
with nothing to learn from gives 0 x the logits' sum: a zero loss that keeps every head in the graph (DDP).

Validation loss. Every validation pass also logs ``val/loss``: the training objective without the curriculum (theirs
applies it in training only), averaged over batches as SpeechBrain's stage loss is: what the authors' NewBob
schedulers watch (``train_ser.py`` ``on_stage_end``: ``lr_annealing(stage_loss)``).

VAD. ``gaussian_nll`` (default, theirs): the head predicts 3 means and 3 log-variances, targets are the ratings
mapped to [-1, 1] by :func:`~ser_lightning.losses.vad.scale_vad_targets`, the loss is
:class:`~ser_lightning.losses.vad.GaussianNLLCCCLoss`; the eval ``ccc_*`` metrics compare the predicted means
with the same scaled targets. ``ccc``: 3 outputs on the raw ratings, loss 1 - CCC, metrics on the raw ratings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchmetrics.regression import ConcordanceCorrCoef

from ser_lightning.labels import normalized_entropy
from ser_lightning.losses import (
    CCCLoss,
    ClassBalancedCrossEntropyLoss,
    ClassWeightedKLDivergenceLoss,
    CurriculumSetting,
    GaussianNLLCCCLoss,
    SoftClassBalancedCrossEntropyLoss,
    curriculum_loss,
    scale_vad_targets,
)
from ser_lightning.losses.hard_targets import neutral_guard_class
from ser_lightning.metrics.functional.probability import dominant_class, js_divergence_per_item, kl_divergence_per_item
from ser_lightning.models.base import EVAL_STAGES, DistributionModule
from ser_lightning.nn import MLPHead
from ser_lightning.optim import NewBobScheduler
from ser_lightning.types import Batch, DataRequirements

VAD_NAMES = ("valence", "arousal", "dominance")
CategoricalLoss = Literal["ce", "cbce", "soft_cbce", "kl", "wkld", "js"]
HARD_LOSSES = ("ce", "cbce")
CATEGORICAL_LOSSES = ("ce", "cbce", "soft_cbce", "kl", "wkld", "js")
HardTarget = Literal["neutral_guard", "consensus", "plurality"]
HARD_TARGETS = ("neutral_guard", "consensus", "plurality")


class WavLMMultitask(DistributionModule):
    """WavLM-Base(+) encoder with a categorical head and a valence/arousal/dominance head (paper 004).

    The categorical target is chosen by the DataModule's ``label_source`` (``primary`` or ``merged``: the
    authors' weighted rule) and ``categorical_loss`` here (see the module docstring). Keeping or dropping the
    Other class is a class-set choice made when the shards are written (``--classes msp9`` or ``msp8``).

    Args:
        audio_encoder: the WavLM encoder (fine-tuned in the paper: ``freeze="feature_extractor"``).
        num_classes: size of the class set (linked from the DataModule).
        classes: class names (linked from the DataModule).
        bin_edges: entropy edges of the per-bin metrics (linked from the DataModule).
        class_counts: training counts per class, for ``cbce``, ``soft_cbce`` and ``wkld`` (linked from the DataModule).
        categorical_loss: ``ce``, ``cbce``, ``soft_cbce``, ``kl``, ``wkld`` or ``js``.
        hard_target: the label of ``ce`` / ``cbce``: ``neutral_guard`` (theirs), ``consensus`` (the corpus's) or
            ``plurality`` (of the target); see the module docstring.
        vad_loss: ``gaussian_nll`` (theirs: NLL + 0.1 (1 - CCC) on scaled targets) or ``ccc`` (1 - CCC, raw ratings).
        vad_weight: weight of the VAD loss (theirs: ``lambda_vad`` 0.3; 0 turns the regression task off).
        head: ``mlp`` (Linear-ReLU-Dropout-Linear) or ``layernorm_gelu`` (theirs: Linear-LayerNorm-GELU-Dropout-Linear).
        head_hidden_dim: hidden size of both heads.
        dropout: dropout inside the heads (theirs: 0.2).
        cb_beta: β of the class-balanced weights (theirs: 0.9999).
        encoder_lr: AdamW learning rate of the encoder (paper: 1e-5).
        head_lr: AdamW learning rate of the heads (paper: 1e-4).
        weight_decay: AdamW weight decay.
        lr_schedule: ``newbob`` (paper 004: each epoch's ``plateau_monitor`` against the previous epoch's,
            :class:`~ser_lightning.optim.NewBobScheduler`) or ``plateau`` (``ReduceLROnPlateau(patience=0)``: against
            the best so far; the default of checkpoints written before ``newbob`` existed).
        plateau_factor: learning-rate factor of an annealing (paper: 0.9).
        plateau_threshold: relative improvement below which the rate is annealed (paper: 0.0025).
        plateau_monitor: the validation metric the annealing watches (theirs: the validation loss, ``val/loss``).
    """

    def __init__(
        self,
        audio_encoder: nn.Module,
        num_classes: int = 9,
        classes: Sequence[str] | None = None,
        bin_edges: Sequence[float] | None = None,
        class_counts: Sequence[float] | None = None,
        categorical_loss: CategoricalLoss = "kl",
        hard_target: HardTarget = "neutral_guard",
        vad_loss: Literal["gaussian_nll", "ccc"] = "gaussian_nll",
        vad_weight: float = 0.3,
        head: Literal["mlp", "layernorm_gelu"] = "mlp",
        head_hidden_dim: int = 256,
        dropout: float = 0.1,
        cb_beta: float = 0.9999,
        encoder_lr: float = 1e-5,
        head_lr: float = 1e-4,
        weight_decay: float = 1e-2,
        plateau_factor: float = 0.9,
        plateau_threshold: float = 0.0025,
        plateau_monitor: str = "val/js",
        lr_schedule: Literal["newbob", "plateau"] = "plateau",
    ) -> None:
        super().__init__(num_classes, classes, bin_edges)
        self.save_hyperparameters(ignore=["audio_encoder"])
        if categorical_loss not in CATEGORICAL_LOSSES:
            raise ValueError(f"categorical_loss must be one of {CATEGORICAL_LOSSES}, got {categorical_loss!r}")
        if hard_target not in HARD_TARGETS:
            raise ValueError(f"hard_target must be one of {HARD_TARGETS}, got {hard_target!r}")
        if lr_schedule not in ("newbob", "plateau"):
            raise ValueError(f"lr_schedule must be 'newbob' or 'plateau', got {lr_schedule!r}")
        if vad_loss not in ("gaussian_nll", "ccc"):
            raise ValueError(f"vad_loss must be 'gaussian_nll' or 'ccc', got {vad_loss!r}")
        self.audio_encoder = audio_encoder
        dim = audio_encoder.output_dim
        style = {"mlp": "relu", "layernorm_gelu": "layernorm_gelu"}.get(head)
        if style is None:
            raise ValueError(f"head must be 'mlp' or 'layernorm_gelu', got {head!r}")
        self.categorical_head = MLPHead(dim, num_classes, head_hidden_dim, dropout, style=style)
        # mean and log-variance per dimension for the Gaussian NLL (theirs: out_n_neurons 6)
        vad_outputs = 2 * len(VAD_NAMES) if vad_loss == "gaussian_nll" else len(VAD_NAMES)
        # no regression head without its loss: a head without gradients would break DDP
        self.vad_head = MLPHead(dim, vad_outputs, head_hidden_dim, dropout, style=style) if vad_weight else None
        self.categorical_loss = _categorical_loss(categorical_loss, class_counts, cb_beta)
        self.vad_loss = GaussianNLLCCCLoss() if vad_loss == "gaussian_nll" else CCCLoss()
        self.vad_metrics = nn.ModuleDict(
            {stage: ConcordanceCorrCoef(num_outputs=len(VAD_NAMES)) for stage in EVAL_STAGES}
        )
        self.curriculum: CurriculumSetting | None = None  # set each epoch by the EntropyCurriculum callback

    def data_requirements(self) -> DataRequirements:
        """Audio at the encoder's sample rate; no text."""
        return {"sample_rate": self.audio_encoder.sample_rate}

    def outputs(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """Categorical logits ``(B, C)`` and raw VAD outputs ``(B, 6)`` / ``(B, 3)`` (``None`` without the task)."""
        h = self.audio_encoder(batch["audio"], batch["audio_mask"])
        return self.categorical_head(h), None if self.vad_head is None else self.vad_head(h)

    def forward(self, batch: Batch) -> Tensor:
        """Predicted class distribution."""
        return self.outputs(batch)[0].softmax(-1)

    # -- losses --------------------------------------------------------------------------------
    def hard_labels(self, batch: Batch) -> Tensor:
        """``(B,)`` class indices of ``ce`` / ``cbce``, -1 where the sample has none (consensus, neutral guard)."""
        if self.hparams.hard_target == "plurality":
            return dominant_class(batch["targets"]).long()  # ties toward the class listed first
        if self.hparams.hard_target == "neutral_guard":
            if "primary_votes" not in batch:
                raise KeyError("hard_target 'neutral_guard' needs batch['primary_votes'] (the shards' primary votes)")
            return neutral_guard_class(batch["targets"].double(), batch["primary_votes"].double(), self.classes)
        if "consensus" not in batch:
            raise KeyError("hard_target 'consensus' needs batch['consensus'] (re-run ser-prepare for consensus labels)")
        return batch["consensus"].long()

    def categorical_per_sample(self, logits: Tensor, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """Per-sample categorical losses ``(B,)`` and, for hard labels, which rows have one ``(B,)`` bool."""
        name = self.hparams.categorical_loss
        if name in HARD_LOSSES:
            labels = self.hard_labels(batch).to(logits.device)
            rows = labels >= 0
            per_sample = self.categorical_loss(logits, labels.clamp_min(0))  # w_y·nll; a -1 row is dropped below
            return per_sample, rows if self.hparams.hard_target != "plurality" else None
        target = batch["targets"].to(logits.dtype)
        if name == "kl":
            return kl_divergence_per_item(target, logits.log_softmax(-1)), None  # theirs: KLDivLoss(batchmean)
        if name == "js":
            return js_divergence_per_item(target, logits.softmax(-1)), None
        return self.categorical_loss(logits, target), None

    def classification_loss(
        self, logits: Tensor, batch: Batch, setting: CurriculumSetting | None = None
    ) -> dict[str, Tensor]:
        """``categorical``: the loss under the curriculum ``setting``; hard labels add ``hard_label_missing``."""
        per_sample, rows = self.categorical_per_sample(logits, batch)
        active = setting is not None and setting.active
        h_norm = normalized_entropy(batch["entropy"].to(logits.device), self.num_classes) if active else None
        terms: dict[str, Tensor] = {}
        if rows is not None:
            terms["hard_label_missing"] = (~rows).sum().float()
            per_sample = per_sample[rows]
            h_norm = None if h_norm is None else h_norm[rows]
        if per_sample.numel() == 0:  # nothing to learn from: a zero that keeps the graph (DDP)
            terms["categorical"] = logits.sum() * 0.0
        elif h_norm is None:
            terms["categorical"] = per_sample.mean()
        else:
            terms["categorical"] = curriculum_loss(per_sample, h_norm, setting)
        return terms

    def vad_terms(self, vad: Tensor, batch: Batch) -> dict[str, Tensor]:
        """``vad``: the VAD loss; ``vad_nll`` and ``vad_ccc_loss`` (Gaussian NLL) or ``vad_ccc_loss`` (CCC)."""
        target = batch["vad"].to(vad.device, vad.dtype)
        if self.hparams.vad_loss == "ccc":
            loss = self.vad_loss(vad, target)
            return {"vad": loss, "vad_ccc_loss": loss.detach()}
        k = len(VAD_NAMES)
        out = self.vad_loss(vad[:, :k], vad[:, k:], scale_vad_targets(target))
        return {"vad": out["loss"], "vad_nll": out["nll"].detach(), "vad_ccc_loss": out["ccc_loss"].detach()}

    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        """Categorical loss (curriculum-weighted when active) + ``vad_weight`` x the VAD loss."""
        return self.objective(*self.outputs(batch), batch, self.curriculum)

    def objective(
        self, logits: Tensor, vad: Tensor | None, batch: Batch, setting: CurriculumSetting | None
    ) -> dict[str, Tensor]:
        """``loss`` = categorical loss under ``setting`` + ``vad_weight`` x the VAD loss, and its logged parts."""
        terms = self.classification_loss(logits, batch, setting)
        loss = terms["categorical"]
        terms["categorical"] = loss.detach()
        if vad is not None:
            vad_terms = self.vad_terms(vad, batch)
            loss = loss + self.hparams.vad_weight * vad_terms.pop("vad")
            terms.update(vad_terms)
        return {"loss": loss, **terms}

    # -- evaluation ----------------------------------------------------------------------------
    def vad_prediction(self, vad: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """The predicted VAD values and the targets they are scored against (means and scaled targets for NLL)."""
        if self.hparams.vad_loss == "ccc":
            return vad, target
        return vad[:, : len(VAD_NAMES)], scale_vad_targets(target)

    def _eval_step(self, stage: str, batch: Batch) -> None:
        logits, vad = self.outputs(batch)
        self._update_eval_metrics(stage, logits.softmax(-1), batch)
        if stage == "val" and self._trainer is not None:
            # theirs: SpeechBrain's stage loss, the plain mean of the batch losses (hence batch_size=1)
            loss = self.objective(logits, vad, batch, None)["loss"]
            self.log("val/loss", loss, on_epoch=True, batch_size=1, sync_dist=True)
        if vad is None:
            return
        pred, target = self.vad_prediction(vad.float(), batch["vad"].float().to(vad.device))
        valid = torch.isfinite(target).all(-1)
        if valid.any():
            self.vad_metrics[stage].update(pred[valid], target[valid])

    def _log_eval(self, stage: str) -> None:
        super()._log_eval(stage)
        if self.vad_head is None:
            return
        metric = self.vad_metrics[stage]
        # compute() synchronises: every rank calls it, whatever it saw (NaN when fewer than 2 rated clips)
        ccc = metric.compute() if metric.update_count or self.trainer.world_size > 1 else None
        if ccc is not None:
            self.log_dict({f"{self.eval_prefix[stage]}/ccc_{name}": ccc[i] for i, name in enumerate(VAD_NAMES)})
        metric.reset()

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with separate encoder and head rates, annealed on ``plateau_monitor`` (NewBob, or on a plateau)."""
        hp = self.hparams
        groups = self.parameter_groups((self.audio_encoder,), hp.head_lr, hp.encoder_lr)
        optimizer = torch.optim.AdamW(groups, weight_decay=hp.weight_decay)
        if hp.get("lr_schedule", "plateau") == "newbob":  # paper 004 Sec. 3.1, per group (backbone, heads)
            scheduler: Any = NewBobScheduler(optimizer, threshold=hp.plateau_threshold, factor=hp.plateau_factor)
        else:
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=hp.plateau_factor, threshold=hp.plateau_threshold, patience=0
            )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": hp.plateau_monitor}}


def _categorical_loss(name: str, class_counts: Sequence[float] | None, beta: float) -> nn.Module | None:
    """The per-sample loss module of ``name`` (``kl`` / ``js`` are functional: None)."""
    if name == "ce":
        return ClassBalancedCrossEntropyLoss(None, reduction="none")
    if name == "cbce":
        # per sample w_y·nll, batch-averaged: train_ser.py, SerBrain.compute_objectives, cbce branch
        return ClassBalancedCrossEntropyLoss(class_counts, beta, reduction="none")
    if name == "soft_cbce":
        return SoftClassBalancedCrossEntropyLoss(class_counts, beta, reduction="none")
    if name == "wkld":
        if class_counts is None:
            raise ValueError("categorical_loss 'wkld' needs class_counts (linked from the DataModule)")
        return ClassWeightedKLDivergenceLoss(class_counts, reduction="none")
    return None
