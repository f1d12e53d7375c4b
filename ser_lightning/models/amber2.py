"""AmbER²: audio, text and fusion heads in a teacher-student setup with adaptive expert weights (Wu et al.)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ser_lightning.losses import AmbER2Loss, ClassBalancedCrossEntropyLoss
from ser_lightning.models.base import EVAL_STAGES, DistributionModule
from ser_lightning.nn import GatedFusion, MLPHead, TextEncoder
from ser_lightning.types import Batch, DataRequirements

HEADS = ("audio", "text", "fusion")


class AmbER2(DistributionModule):
    """AmbER² (Eq. 1-6): modality heads p_A, p_T, p_AT; one is the student, the others its experts.

    With ``objective="amber2"`` the student learns from the raters (RAI) and from the experts weighted by
    their agreement with the raters (MAI); with ``objective="cbce"`` every head is trained with
    class-balanced cross-entropy on the plurality label (the paper's baseline).

    Validation and test score every head too, as the paper's Tables 1-2 do: next to the student's unprefixed
    metrics (``test/js``, ``test/bin1/js``, ...) each head's full set under ``{stage}/{head}/`` (``test/audio/js``,
    ``test/text/bin1/js``, ``test/fusion/wbin3/f1``, ``test/audio/f1/<class>``, ...), from the same forward pass.

    Args:
        audio_encoder: pooled audio representation h_A (wav2vec2 in the paper): any module with
            ``forward(audio, audio_mask) -> (B, D)``, ``output_dim`` and ``sample_rate`` (AudioEncoder, MelEncoder).
        text_encoder: pooled text representation h_T (BERT in the paper, mask-weighted mean).
        num_classes: size of the class set (linked from the DataModule).
        classes: class names (linked from the DataModule).
        bin_edges: entropy edges of the per-bin metrics (linked from the DataModule's training card).
        class_counts: training plurality counts per class, for CB-CE (linked from the DataModule).
        student: which head is the student m* (the paper uses fusion).
        objective: ``amber2`` (RAI + MAI) or ``cbce`` (baseline).
        fusion_dim: size of the gated-fusion representation.
        head_hidden_dim: hidden size of each two-layer MLP head.
        dropout: dropout inside the heads.
        lambda_rai: λ_RAI of Eq. 6.
        lambda_mai: λ_MAI of Eq. 6.
        kappa: sharpness κ of the expert weights (Eq. 5).
        expert_weight: weight of the experts' own JS(y ‖ p_m) terms (not in the paper; 0 disables).
        detach_experts: whether MAI leaves the experts untouched (not specified by the paper).
        cb_beta: β of the class-balanced weights.
        lr: AdamW learning rate of heads and fusion (paper: 3e-4).
        encoder_lr: learning rate of the trainable encoder parameters (default: ``lr``).
        weight_decay: AdamW weight decay (paper: 1e-2).
    """

    def __init__(
        self,
        audio_encoder: nn.Module,
        text_encoder: TextEncoder,
        num_classes: int = 4,
        classes: Sequence[str] | None = None,
        bin_edges: Sequence[float] | None = None,
        class_counts: Sequence[float] | None = None,
        student: Literal["fusion", "audio", "text"] = "fusion",
        objective: Literal["amber2", "cbce"] = "amber2",
        fusion_dim: int = 256,
        head_hidden_dim: int = 256,
        dropout: float = 0.1,
        lambda_rai: float = 1.0,
        lambda_mai: float = 0.5,
        kappa: float = 4.0,
        expert_weight: float = 1.0,
        detach_experts: bool = True,
        cb_beta: float = 0.999,
        lr: float = 3e-4,
        encoder_lr: float | None = None,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(num_classes, classes, bin_edges)
        self.save_hyperparameters(ignore=["audio_encoder", "text_encoder"])
        if student not in HEADS:
            raise ValueError(f"student must be one of {HEADS}, got {student!r}")
        self.audio_encoder = audio_encoder
        self.text_encoder = text_encoder
        self.fusion = GatedFusion(audio_encoder.output_dim, text_encoder.output_dim, fusion_dim)
        in_dims = {"audio": audio_encoder.output_dim, "text": text_encoder.output_dim, "fusion": fusion_dim}
        self.heads = nn.ModuleDict({m: MLPHead(in_dims[m], num_classes, head_hidden_dim, dropout) for m in HEADS})
        self.student = student
        self.objective = objective
        self.amber2_loss = AmbER2Loss(lambda_rai, lambda_mai, kappa, expert_weight, detach_experts)
        self.cbce_loss = ClassBalancedCrossEntropyLoss(class_counts, cb_beta)
        # per-head evaluation (Tables 1-2): one metric collection per stage and head, built like the student's
        self.head_metrics = nn.ModuleDict(
            {stage: nn.ModuleDict({m: self.new_eval_metric() for m in HEADS}) for stage in EVAL_STAGES}
        )

    def data_requirements(self) -> DataRequirements:
        """What the DataModule must deliver: audio at the encoder's rate, tokens of the text encoder."""
        return {"sample_rate": self.audio_encoder.sample_rate, "tokenizer": self.text_encoder.tokenizer_name_or_path}

    def head_logits(self, batch: Batch) -> dict[str, Tensor]:
        """Logits of the audio, text and fusion heads (Eq. 2 before the softmax)."""
        h_a = self.audio_encoder(batch["audio"], batch["audio_mask"])
        h_t = self.text_encoder(batch["text_input_ids"], batch["text_attention_mask"])
        h_at = self.fusion(h_a, h_t)
        return {
            "audio": self.heads["audio"](h_a),
            "text": self.heads["text"](h_t),
            "fusion": self.heads["fusion"](h_at),
        }

    def forward(self, batch: Batch) -> Tensor:
        """The student's distribution s = p_{m*}."""
        return self.head_logits(batch)[self.student].softmax(-1)

    def _eval_step(self, stage: str, batch: Batch) -> None:
        """Score the student (unprefixed metrics, test predictions) and every head from one forward pass."""
        probs = {m: v.softmax(-1) for m, v in self.head_logits(batch).items()}
        self._update_eval_metrics(stage, probs[self.student], batch)
        for m in HEADS:
            self.head_metrics[stage][m].update(probs[m].float(), batch["targets"].float(), batch["entropy"])

    def _log_eval(self, stage: str) -> None:
        """Log the student's metrics, then each head's under ``{stage}/{head}/`` (synchronised across ranks)."""
        super()._log_eval(stage)
        for m in HEADS:
            self.log_eval_metric(f"{self.eval_prefix[stage]}/{m}", self.head_metrics[stage][m])

    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        """AmbER² (Eq. 6) or CB-CE loss terms, with the expert weights u_m for logging."""
        logits = self.head_logits(batch)
        target = batch["targets"]
        if self.objective == "cbce":
            terms = {f"cbce_{m}": self.cbce_loss(logits[m], target) for m in HEADS}
            return {"loss": sum(terms.values()), **{k: v.detach() for k, v in terms.items()}}
        probs = {m: v.softmax(-1) for m, v in logits.items()}
        experts = {m: p for m, p in probs.items() if m != self.student}
        return self.amber2_loss(probs[self.student], experts, target)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW; trainable encoder parameters may get their own learning rate."""
        hp = self.hparams
        groups = self.parameter_groups((self.audio_encoder, self.text_encoder), hp.lr, hp.encoder_lr or hp.lr)
        return torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
