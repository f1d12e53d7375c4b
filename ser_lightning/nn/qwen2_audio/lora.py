"""LoRA on Qwen2-Audio's language model (Scaling Ambiguity Sec. 3.2: r=8, alpha=16, dropout 0.2, q/k/v/o), in fp32.

The base is frozen; the adapters go on the language model's attention projections only, and their parameters are
kept in fp32 (at lr 2.5e-6, bf16 weights would round the updates away).
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import Qwen2AudioForConditionalGeneration

# peft full-matches these against module names. A plain ["q_proj", "k_proj", "v_proj", "o_proj"] (the authors'
# ``prepare_lora_model``) also hits the audio encoder's q/k/v, whose output projection is ``out_proj``.
LANGUAGE_MODEL_TARGETS = r".*language_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"
AUDIO_ENCODER_TARGETS = r".*audio_tower\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj)"


def lora_target_regex(include_audio_encoder: bool = False) -> str:
    """The peft ``target_modules`` regex: the language model's q/k/v/o, plus the encoder's q/k/v if asked."""
    if include_audio_encoder:
        return f"({LANGUAGE_MODEL_TARGETS})|({AUDIO_ENCODER_TARGETS})"
    return LANGUAGE_MODEL_TARGETS


def _adapters_to_fp32(model: nn.Module) -> None:
    """LoRA weights in fp32: at lr 2.5e-6 bf16 weights would round the updates away."""
    for name, param in model.named_parameters():
        if "lora_" in name and param.dtype != torch.float32:
            param.data = param.data.float()


def apply_lora(
    model: Qwen2AudioForConditionalGeneration,
    *,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.2,
    include_audio_encoder: bool = False,
) -> PeftModel:
    """Wrap ``model`` with LoRA adapters (Scaling Ambiguity Sec. 3.2 defaults); only the adapters train.

    Args:
        model: a frozen Qwen2-Audio from :func:`load_qwen2_audio`.
        r: LoRA rank.
        alpha: LoRA scaling factor.
        dropout: dropout on the adapter input.
        include_audio_encoder: also adapt the encoder's q/k/v (what the authors' plain name list did); the
            encoder then trains, runs with autograd and cannot use the encoder cache.
    """
    if r <= 0 or alpha <= 0 or not 0.0 <= dropout < 1.0:
        raise ValueError(f"need r > 0, alpha > 0 and dropout in [0, 1), got r={r}, alpha={alpha}, dropout={dropout}")
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_target_regex(include_audio_encoder),
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    _adapters_to_fp32(peft_model)
    return peft_model


def load_lora(
    model: Qwen2AudioForConditionalGeneration, adapter_dir: str | Path, *, trainable: bool = False
) -> PeftModel:
    """Attach adapters saved with ``PeftModel.save_pretrained`` to a freshly loaded base."""
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    _adapters_to_fp32(peft_model)
    return peft_model
