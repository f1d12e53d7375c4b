"""Audio-language models: prompts, the processor inputs they need, and (later) clients and answer parsing."""

from ser_lightning.alm.features import Qwen2AudioFeatures
from ser_lightning.alm.prompts import (
    DISTRIBUTION_SYSTEM_MESSAGE,
    distribution_conversation,
    distribution_prompt,
    qwen2_audio_inputs,
)

__all__ = [
    "DISTRIBUTION_SYSTEM_MESSAGE",
    "Qwen2AudioFeatures",
    "distribution_conversation",
    "distribution_prompt",
    "qwen2_audio_inputs",
]
