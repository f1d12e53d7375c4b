"""Qwen2-Audio in one place: loading (dtype, quantisation, checkpointing), LoRA, and the fast hidden-state forward.

Models, the annotator tool and the test-time-scaling work all import from here. The backbone is a hub id or a
local directory laid out like the hub's (model and processor as ``save_pretrained`` writes them; read with
``local_files_only``). The base is frozen; LoRA goes on the language model's attention projections only (Scaling
Ambiguity Sec. 3.2: r=8, alpha=16, dropout 0.2, q/k/v/o) and its parameters are kept in fp32.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor, nn
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

from ser_lightning.nn.pretrained import pretrained
from ser_lightning.nn.qwen2_audio_cache import EncoderCache, encode_audio_cached
from ser_lightning.nn.qwen2_audio_forward import encode_audio, language_hidden_states, qwen2_audio_core

Quantization = Literal["4bit", "8bit"]

# peft full-matches these against module names. A plain ["q_proj", "k_proj", "v_proj", "o_proj"] (the authors'
# ``prepare_lora_model``) also hits the audio encoder's q/k/v, whose output projection is ``out_proj``.
LANGUAGE_MODEL_TARGETS = r".*language_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"
AUDIO_ENCODER_TARGETS = r".*audio_tower\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj)"
# Kept in bf16 under QLoRA: the encoder (exact and cacheable), the projector and the unused vocabulary head.
_NOT_QUANTIZED = ["audio_tower", "multi_modal_projector", "lm_head"]


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.bfloat16`` from itself or from ``"bfloat16"`` / ``"torch.bfloat16"`` (YAML configs)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return value


def quantization_config(quantization: Quantization | None, compute_dtype: torch.dtype) -> Any:
    """A bitsandbytes config for QLoRA, or ``None``; a clear error without bitsandbytes or without CUDA."""
    if quantization is None:
        return None
    if quantization not in ("4bit", "8bit"):
        raise ValueError(f"quantization must be null, '4bit' or '8bit', got {quantization!r}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(
            f"quantization={quantization!r} needs bitsandbytes, which is not installed: "
            "pip install 'ser-lightning[qlora]' (the qlora extra)"
        )
    if not torch.cuda.is_available():
        raise RuntimeError(f"quantization={quantization!r} needs CUDA (bitsandbytes) and no CUDA GPU is available")
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
            llm_int8_skip_modules=_NOT_QUANTIZED,
        )
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=_NOT_QUANTIZED)


def load_qwen2_audio(
    backbone: str | Path,
    *,
    dtype: torch.dtype | str = torch.bfloat16,
    quantization: Quantization | None = None,
    gradient_checkpointing: bool = False,
    device_map: Any = None,
    attn_implementation: str | None = None,
) -> tuple[Qwen2AudioForConditionalGeneration, Any]:
    """Load a frozen Qwen2-Audio and its processor (tokenizer right-padded).

    Args:
        backbone: hub id (``Qwen/Qwen2-Audio-7B-Instruct``) or a local directory laid out like the hub's (offline).
        dtype: dtype of the frozen base weights (bf16; adapters and heads stay fp32).
        quantization: ``"4bit"`` / ``"8bit"`` for QLoRA through bitsandbytes (the ``qlora`` extra, CUDA only).
        gradient_checkpointing: recompute activations in backward, non-reentrant (the embeddings are frozen).
        device_map: passed to ``from_pretrained``; quantised loads default to this process's ``LOCAL_RANK`` GPU.
        attn_implementation: ``"sdpa"``, ``"eager"``, ``"flash_attention_2"``; ``None`` = transformers' default.
    """
    dtype = _as_dtype(dtype)
    path = Path(backbone).expanduser()
    local = path.is_dir()
    if not local and (path.is_absolute() or str(backbone).startswith((".", "~"))):
        raise FileNotFoundError(f"backbone directory {backbone} does not exist (give a hub id or a local directory)")
    if local:
        backbone = path
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": local}
    bnb = quantization_config(quantization, dtype)
    if bnb is not None:
        kwargs["quantization_config"] = bnb
        if device_map is None:
            device_map = {"": int(os.environ.get("LOCAL_RANK", 0))}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = pretrained(Qwen2AudioForConditionalGeneration.from_pretrained, backbone, what="Qwen2-Audio", **kwargs)
    processor = pretrained(
        AutoProcessor.from_pretrained, backbone, what="Qwen2-Audio processor", local_files_only=local
    )
    processor.tokenizer.padding_side = "right"
    model.requires_grad_(False)
    if gradient_checkpointing:
        enable_checkpointing(model)
    return model, processor


def enable_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing (the renamed API from transformers 5.18 on, the old one on 5.17)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


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


def qwen2_audio_hidden_states(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    input_features: Tensor,
    feature_attention_mask: Tensor,
    *,
    ids: Sequence[str] | None = None,
    augmented: Sequence[bool] | Tensor | None = None,
    cache: EncoderCache | None = None,
    trim: bool = True,
) -> Tensor:
    """Last hidden states ``(B, T, H)`` of the language model for a right-padded processor batch.

    The encoder runs on valid frames only (``trim``), its outputs come from ``cache`` for un-augmented samples
    when one is given (keyed by ``ids``), and no ``lm_head`` is applied.
    """
    core = qwen2_audio_core(model)
    if cache is None:
        audio = encode_audio(core.audio_tower, input_features, feature_attention_mask, trim=trim)
    else:
        if ids is None:
            raise ValueError("the encoder cache needs the utterance ids of the batch")
        audio = encode_audio_cached(
            core.audio_tower,
            input_features,
            feature_attention_mask,
            ids=ids,
            cache=cache,
            augmented=augmented,
            trim=trim,
        )
    return language_hidden_states(model, input_ids, attention_mask, audio)
