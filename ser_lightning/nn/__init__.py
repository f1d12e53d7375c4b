"""Plain ``nn.Module`` building blocks shared by the models: encoders, pooling, heads and fusion."""

from ser_lightning.nn.audio import AudioEncoder, normalize_waveform, tiny_audio_config
from ser_lightning.nn.distribution_head import EmotionClassifierHead
from ser_lightning.nn.heads import GatedFusion, MLPHead
from ser_lightning.nn.mel import MelEncoder
from ser_lightning.nn.pooling import AttentiveStatisticsPooling, MeanPooling, masked_mean
from ser_lightning.nn.tc_gru import TCGRUPooling
from ser_lightning.nn.text import TextEncoder, minilm_path, tiny_text_config

__all__ = [
    "AttentiveStatisticsPooling",
    "AudioEncoder",
    "EmotionClassifierHead",
    "GatedFusion",
    "MLPHead",
    "MeanPooling",
    "MelEncoder",
    "TCGRUPooling",
    "TextEncoder",
    "masked_mean",
    "minilm_path",
    "normalize_waveform",
    "tiny_audio_config",
    "tiny_text_config",
]
