"""Qwen2-Audio, one family of audio-language models: everything the models and tools need of it, in one package.

- :mod:`.loading`: the frozen model by hub id or local directory (dtype, QLoRA quantisation, checkpointing) and
  :func:`load_processor`, the one place a processor is loaded.
- :mod:`.offline`: a random model of any size and a processor built without a download (tests, debug, benchmarks).
- :mod:`.base`: :func:`qwen2_audio_base`, the base a model builds on (loaded, or random from a config).
- :mod:`.lora`: LoRA on the language model's attention (Scaling Ambiguity Sec. 3.2).
- :mod:`.forward`: the trimmed encoder and the language model's last hidden states (no ``lm_head``).
- :mod:`.cache`: the on-disk cache of the frozen encoder's outputs.

Another audio-language-model family joins as a sibling package of the same shape (``nn/<family>/``: loading with
its processor, an offline random base, its fast paths), so callers pick a family by package, not by branches here.
"""

from ser_lightning.nn.qwen2_audio.base import qwen2_audio_base
from ser_lightning.nn.qwen2_audio.cache import EncoderCache, encoder_fingerprint, feature_settings
from ser_lightning.nn.qwen2_audio.forward import qwen2_audio_core, qwen2_audio_hidden_states
from ser_lightning.nn.qwen2_audio.loading import Quantization, enable_checkpointing, load_processor, load_qwen2_audio
from ser_lightning.nn.qwen2_audio.lora import apply_lora, load_lora, lora_target_regex
from ser_lightning.nn.qwen2_audio.offline import (
    TINY_QWEN2_AUDIO_CONFIG,
    build_random_qwen2_audio,
    offline_processor_sizes,
    offline_qwen2_audio_processor,
    random_qwen2_audio,
)

__all__ = [
    "TINY_QWEN2_AUDIO_CONFIG",
    "EncoderCache",
    "Quantization",
    "apply_lora",
    "build_random_qwen2_audio",
    "enable_checkpointing",
    "encoder_fingerprint",
    "feature_settings",
    "load_lora",
    "load_processor",
    "load_qwen2_audio",
    "lora_target_regex",
    "offline_processor_sizes",
    "offline_qwen2_audio_processor",
    "qwen2_audio_base",
    "qwen2_audio_core",
    "qwen2_audio_hidden_states",
    "random_qwen2_audio",
]
