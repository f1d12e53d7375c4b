"""Qwen2-Audio from the hub or a local directory: the frozen model (dtype, QLoRA, checkpointing) and its processor.

The backbone is a hub id or a local directory laid out like the hub's (model and processor as ``save_pretrained``
writes them; read with ``local_files_only``). :func:`load_processor` is the one place a processor is loaded: the
model loader, the DataModule's worker transforms and the annotator all call it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

from ser_lightning.nn.pretrained import pretrained

Quantization = Literal["4bit", "8bit"]

# Kept in bf16 under QLoRA: the encoder (exact and cacheable), the projector and the unused vocabulary head.
_NOT_QUANTIZED = ["audio_tower", "multi_modal_projector", "lm_head"]


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
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
    dtype = as_dtype(dtype)
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
    processor = load_processor(backbone)
    model.requires_grad_(False)
    if gradient_checkpointing:
        enable_checkpointing(model)
    return model, processor


def load_processor(backbone: str | Path) -> Any:
    """The processor of a hub id or a local directory (a directory is read offline), tokenizer right-padded."""
    path = Path(backbone).expanduser()
    local = path.is_dir()
    source = path if local else backbone
    processor = pretrained(AutoProcessor.from_pretrained, source, what="Qwen2-Audio processor", local_files_only=local)
    processor.tokenizer.padding_side = "right"
    return processor


def enable_checkpointing(model: nn.Module) -> None:
    """Non-reentrant activation checkpointing (the renamed API from transformers 5.18 on, the old one on 5.17)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
