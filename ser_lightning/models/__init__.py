"""LightningModules, one file per paper's model."""

from ser_lightning.models.alm import ALMDistribution
from ser_lightning.models.amber2 import AmbER2
from ser_lightning.models.base import DistributionModule
from ser_lightning.models.qwen2_audio import Qwen2AudioDistribution
from ser_lightning.models.wavlm_multitask import WavLMMultitask

__all__ = ["ALMDistribution", "AmbER2", "DistributionModule", "Qwen2AudioDistribution", "WavLMMultitask"]
