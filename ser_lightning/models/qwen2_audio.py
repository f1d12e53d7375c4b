"""Qwen2-Audio-7B-Instruct + LoRA + a distribution head (Scaling Ambiguity, Sec. 2.4 and 3.2).

Where the paper is silent this follows its authors' code (``WendaZhang08/scaling-ambiguity-SER``,
``model_finetuning/train.py``: ``prepare_lora_model``, ``EmotionClassifierHead``, ``EmotionLoss``,
``get_training_args``). Loading, LoRA and the fast forward live in :mod:`ser_lightning.nn.qwen2_audio`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ser_lightning.alm.features import FEATURE_KEYS, Qwen2AudioFeatures
from ser_lightning.losses import JSDivergenceLoss
from ser_lightning.metrics.functional.probability import entropy
from ser_lightning.models.base import DistributionModule
from ser_lightning.nn.distribution_head import EmotionClassifierHead
from ser_lightning.nn.qwen2_audio import (
    EncoderCache,
    Quantization,
    apply_lora,
    encoder_fingerprint,
    feature_settings,
    offline_processor_sizes,
    qwen2_audio_base,
    qwen2_audio_core,
    qwen2_audio_hidden_states,
)
from ser_lightning.runs.adapters import adapter_targets, write_adapter
from ser_lightning.types import Batch, DataRequirements

log = logging.getLogger(__name__)

__all__ = ["Qwen2AudioDistribution", "accumulation_steps", "warmup_cosine"]


class Qwen2AudioDistribution(DistributionModule):
    """Frozen Qwen2-Audio with LoRA on the language model's attention and a distribution head over its last states.

    The input is the authors' fine-tuning prompt (system message, utterance, speaker, the shards' class names,
    Rules 1-5, the JSON example) with the audio, built in the DataModule's workers by the
    :class:`~ser_lightning.alm.features.Qwen2AudioFeatures` that :meth:`data_requirements` hands over. The
    backbone is built in :meth:`configure_model` (on the run's device), so ``test`` / ``predict`` with
    ``--ckpt_path`` rebuild the base from ``backbone`` and load only what was trained: checkpoints hold the LoRA
    and head parameters; the frozen base is a lean part (:meth:`lean_parts`), rebuilt and checked against the
    fingerprint the checkpoint stores.

    Precision: the base is frozen in ``dtype`` (bf16), adapters and head are fp32; run under ``bf16-mixed``.
    ``bf16-true`` / ``16-true`` are refused: at lr 2.5e-6 half-precision weights would round the updates away.

    Args:
        backbone: hub id (``Qwen/Qwen2-Audio-7B-Instruct``) or a local directory laid out like the hub's; ``None``
            builds a random model from ``random_config`` with an offline processor (debug runs, benchmarks).
        num_classes: size of the class set (linked from the DataModule).
        classes: class names, in order: the prompt's VALID EMOTIONS LIST (linked from the DataModule).
        bin_edges: entropy edges of the per-bin metrics (linked from the DataModule).
        class_counts: training plurality counts (linked by the CLI; unused: the loss is JS on distributions).
        random_config: ``Qwen2AudioConfig`` keyword arguments for ``backbone=None`` (``{}``: the 7B sizes).
        dtype: dtype of the frozen base weights.
        quantization: ``4bit`` / ``8bit`` QLoRA through bitsandbytes (the ``qlora`` extra, CUDA only).
        gradient_checkpointing: non-reentrant activation checkpointing in the language model.
        attn_implementation: ``sdpa`` / ``eager`` / ``flash_attention_2``; ``None``: transformers' default.
        lora_r: LoRA rank (paper: 8).
        lora_alpha: LoRA alpha (paper: 16).
        lora_dropout: LoRA dropout (paper: 0.2).
        lora_on_audio_encoder: also adapt the audio encoder's q/k/v (what the authors' name list did by accident).
        head_dropout: dropout of the head's residual block (authors: 0.15).
        head_projection_dropout: dropout of the head's projection block (authors: 0.1).
        head_num_heads: attention heads of the head (authors: 8).
        entropy_weight: weight of the prediction entropy added to JS in nats (authors' ``EmotionLoss``: 0.08;
            0 = the paper's plain JS).
        lr: AdamW learning rate (authors' ``get_training_args``: 2.5e-6).
        weight_decay: AdamW weight decay, not on biases and norms as in the HF Trainer (authors: 0.03).
        warmup_ratio: share of the optimizer steps with linear warm-up before the cosine decay (authors: 0.15).
        effective_batch_size: sets ``trainer.accumulate_grad_batches = ceil(effective_batch_size / (world_size x
            data.max_batch_size))`` when a fit starts (authors: 8 per device x 8 accumulation = 64); ``None``
            keeps the trainer's setting.
        encoder_cache_dir: directory of the on-disk encoder-output cache (``None``: off); refused with
            ``lora_on_audio_encoder``. DiME-mixed samples (``batch["augmented"]``) bypass it.
        trim_encoder: run the audio encoder on the valid mel frames only (``False``: the stock 30 s padded path).
    """

    def __init__(
        self,
        backbone: str | None = "Qwen/Qwen2-Audio-7B-Instruct",
        num_classes: int = 4,
        classes: Sequence[str] | None = None,
        bin_edges: Sequence[float] | None = None,
        class_counts: Sequence[float] | None = None,
        random_config: dict[str, Any] | None = None,
        dtype: str = "bfloat16",
        quantization: Quantization | None = None,
        gradient_checkpointing: bool = False,
        attn_implementation: str | None = None,
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.2,
        lora_on_audio_encoder: bool = False,
        head_dropout: float = 0.15,
        head_projection_dropout: float = 0.1,
        head_num_heads: int = 8,
        entropy_weight: float = 0.08,
        lr: float = 2.5e-6,
        weight_decay: float = 0.03,
        warmup_ratio: float = 0.15,
        effective_batch_size: int | None = 64,
        encoder_cache_dir: str | None = None,
        trim_encoder: bool = True,
    ) -> None:
        super().__init__(num_classes, classes, bin_edges)
        self.save_hyperparameters()
        if backbone is None and random_config is None:
            raise ValueError("give a backbone (hub id or directory), or backbone=null with a random_config")
        if encoder_cache_dir is not None and lora_on_audio_encoder:
            raise ValueError("encoder_cache_dir needs a frozen audio encoder: it is refused with lora_on_audio_encoder")
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        if effective_batch_size is not None and effective_batch_size < 1:
            raise ValueError(f"effective_batch_size must be >= 1 or null, got {effective_batch_size}")
        self.loss = JSDivergenceLoss(entropy_weight=entropy_weight)  # JS in nats + w x H(p) (authors' EmotionLoss)
        self.backbone: torch.nn.Module | None = None
        self.head: EmotionClassifierHead | None = None
        self.processor: Any | None = None
        self.encoder_cache: EncoderCache | None = None

    # -- building ---------------------------------------------------------------------------
    def data_requirements(self) -> DataRequirements:
        """16 kHz audio and the processor inputs, computed per batch in the DataModule's workers."""
        return {"sample_rate": 16000, "batch_transform": self.feature_transform()}

    def feature_transform(self) -> Qwen2AudioFeatures:
        """The picklable batch transform producing this model's inputs (the processor is rebuilt where it runs)."""
        hp = self.hparams
        return Qwen2AudioFeatures(
            self.classes, backbone=hp.backbone, processor=self.processor, **offline_processor_sizes(hp.random_config)
        )

    def configure_model(self) -> None:
        """Build base, LoRA, head and cache once, on the trainer's device (Lightning hook; idempotent)."""
        if self.backbone is not None:
            return
        trainer = self._trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        precision = str(trainer.precision) if trainer is not None else "32-true"
        if precision in ("bf16-true", "16-true"):
            raise ValueError(f"precision {precision!r} would train LoRA and head in half precision; use bf16-mixed")
        self.build(device)

    def build(self, device: torch.device | str = "cpu") -> None:
        """Load (or randomly build) the frozen base on ``device``, add LoRA, the head and the encoder cache."""
        hp = self.hparams
        model, processor = qwen2_audio_base(
            hp.backbone,
            hp.random_config,
            device=device,
            dtype=hp.dtype,
            quantization=hp.quantization,
            gradient_checkpointing=hp.gradient_checkpointing,
            attn_implementation=hp.attn_implementation,
        )
        self.processor = processor
        if hp.encoder_cache_dir is not None:
            settings = {**feature_settings(processor.feature_extractor), "trim": hp.trim_encoder}
            fingerprint = encoder_fingerprint(qwen2_audio_core(model).audio_tower, settings)
            self.encoder_cache = EncoderCache(hp.encoder_cache_dir, fingerprint)
        self.backbone = apply_lora(
            model,
            r=hp.lora_r,
            alpha=hp.lora_alpha,
            dropout=hp.lora_dropout,
            include_audio_encoder=hp.lora_on_audio_encoder,
        )
        hidden = model.config.text_config.hidden_size
        self.head = EmotionClassifierHead(
            hidden, self.num_classes, hp.head_num_heads, hp.head_dropout, hp.head_projection_dropout
        ).to(device=device, dtype=torch.float32)

    def is_built(self) -> bool:
        """Whether :meth:`build` has run (the base is loaded)."""
        return self.backbone is not None

    def _require_built(self) -> None:
        if self.backbone is None or self.head is None:
            raise RuntimeError("the backbone is built in configure_model(): call it (or build()) before use")

    # -- forward and loss ------------------------------------------------------------------
    def _inputs(self, batch: Batch) -> dict[str, Tensor]:
        """The processor inputs of ``batch``: computed by the DataModule's transform, or here if it did not run."""
        if all(key in batch for key in FEATURE_KEYS):
            return {key: batch[key] for key in FEATURE_KEYS}
        inputs = self.feature_transform()(batch)
        return {key: value.to(self.head.output.weight.device) for key, value in inputs.items()}

    def logits(self, batch: Batch) -> Tensor:
        """Head logits ``(B, C)`` from the language model's last hidden states (no ``lm_head``)."""
        self._require_built()
        inputs = self._inputs(batch)
        hidden = qwen2_audio_hidden_states(
            self.backbone,
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs["input_features"],
            inputs["feature_attention_mask"],
            ids=batch.get("ids"),
            augmented=batch.get("augmented"),
            cache=self.encoder_cache,
            trim=self.hparams.trim_encoder,
        )
        return self.head(hidden, inputs["attention_mask"]).float()

    def forward(self, batch: Batch) -> Tensor:
        """Predicted distributions ``(B, C)``: softmax of the head (paper Fig. 1)."""
        return self.logits(batch).softmax(-1)

    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        """JS(target, p) in nats + ``entropy_weight`` x H(p) (authors' ``EmotionLoss``), with both terms logged."""
        logits = self.logits(batch)
        probs = logits.detach().softmax(-1)
        return {
            "loss": self.loss(logits, batch["targets"].float()),
            "js": JSDivergenceLoss()(logits.detach(), batch["targets"].float()),
            "pred_entropy": entropy(probs).mean(),
        }

    # -- optimisation ----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Before a fit: gradient accumulation so that world size x max batch x accumulation >= effective batch."""
        trainer = self._trainer
        if stage != "fit" or trainer is None or self.hparams.effective_batch_size is None:
            return
        if self.data_facts is None:
            log.warning("no data facts (max_batch_size): accumulation unchanged (%s)", trainer.accumulate_grad_batches)
            return
        per_step = self.data_facts.max_batch_size
        trainer.accumulate_grad_batches = accumulation_steps(
            self.hparams.effective_batch_size, trainer.world_size, per_step
        )
        log.info("accumulate_grad_batches=%d", trainer.accumulate_grad_batches)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over LoRA + head, linear warm-up then cosine to 0, stepped per optimizer step.

        As the authors' HF ``get_training_args``: ``cosine_with_restarts`` with its default single cycle (a plain
        cosine), ``warmup_ratio`` of the steps, no weight decay on biases and norm weights.
        """
        hp = self.hparams
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if p.ndim >= 2], "weight_decay": hp.weight_decay, "name": "decay"},
            {"params": [p for n, p in named if p.ndim < 2], "weight_decay": 0.0, "name": "no_decay"},
        ]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=hp.lr)
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        if not math.isfinite(total):
            raise ValueError("the cosine schedule needs a finite number of steps: set trainer.max_steps or max_epochs")
        schedule = warmup_cosine(int(total), hp.warmup_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- checkpoints and adapters ----------------------------------------------------------
    def lean_parts(self) -> dict[str, dict[str, Any]]:
        """The frozen pretrained base under LoRA (``backbone``), rebuilt from its source and not stored.

        A random base (``backbone=None``, ``random_config``) is stored like any randomly initialised part.
        """
        if self.backbone is None or self.hparams.backbone is None:
            return {}
        return {"backbone": {"source": self.hparams.backbone}}

    def save_adapter(self, directory: str | Path) -> Path:
        """Write ``save_pretrained`` adapters plus ``head.safetensors`` / ``head.json`` of the current weights."""
        self._require_built()
        return write_adapter(self, Path(directory))

    def on_fit_end(self) -> None:
        """Rank 0 writes ``best_adapter/`` and ``last_adapter/`` next to the best and the last checkpoint."""
        if self.trainer.global_rank != 0:
            return
        for ckpt, directory in adapter_targets(self.trainer.checkpoint_callback):
            current = {k: v.detach().clone() for k, v in self.stored_state(self.state_dict()).items()}
            state = torch.load(ckpt, map_location=self.device, weights_only=False)["state_dict"]
            self.load_state_dict(state, strict=False)
            self.save_adapter(directory)
            self.load_state_dict(current, strict=False)
            log.info("wrote adapter %s from %s", directory, ckpt)


def accumulation_steps(effective_batch_size: int, world_size: int, max_batch_size: int) -> int:
    """``ceil(effective / (world_size x max_batch_size))``: optimizer steps see at least the effective batch."""
    return max(1, math.ceil(effective_batch_size / (max(1, world_size) * max(1, max_batch_size))))


def warmup_cosine(total_steps: int, warmup_ratio: float) -> Any:
    """LR factor per step: linear warm-up over ``ceil(ratio x total)`` steps, then cosine from 1 to 0 at ``total``.

    HF ``get_cosine_with_hard_restarts_schedule_with_warmup`` with ``num_cycles=1`` (the authors' scheduler).
    """
    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.0 if progress >= 1.0 else 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
