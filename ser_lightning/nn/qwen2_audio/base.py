"""The frozen base a Qwen2-Audio model builds on: loaded by hub id or directory, or random for debug runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

from ser_lightning.nn.qwen2_audio.loading import Quantization, load_qwen2_audio
from ser_lightning.nn.qwen2_audio.offline import build_random_qwen2_audio


def qwen2_audio_base(
    backbone: str | None,
    random_config: Mapping[str, Any] | None,
    *,
    device: torch.device | str,
    dtype: torch.dtype | str,
    quantization: Quantization | None = None,
    gradient_checkpointing: bool = False,
    attn_implementation: str | None = None,
) -> tuple[Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor]:
    """A model's frozen base and processor: ``backbone`` loaded, or (``None``) a random one from ``random_config``.

    A loaded base on ``device`` gets a device map on CUDA, none when quantised (bitsandbytes places it).
    """
    if backbone is None:
        return build_random_qwen2_audio(
            random_config, device=device, dtype=dtype, gradient_checkpointing=gradient_checkpointing
        )
    on_cuda = torch.device(device).type == "cuda" and quantization is None
    return load_qwen2_audio(
        backbone,
        dtype=dtype,
        quantization=quantization,
        gradient_checkpointing=gradient_checkpointing,
        device_map={"": torch.device(device)} if on_cuda else None,
        attn_implementation=attn_implementation,
    )
