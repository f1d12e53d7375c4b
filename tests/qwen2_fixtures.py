"""A tiny random Qwen2-Audio and an offline processor for the tests, saved like a hub checkpoint.

Import it by name (``from qwen2_fixtures import ...``) from any test, as ``shard_fixtures``: pytest puts
``tests/`` on ``sys.path``. ``write_tiny_qwen2_audio(dir)`` writes model + processor with ``save_pretrained``
so ``load_qwen2_audio(dir)`` (and ``--model.init_args.backbone DIR``) reads them offline. The encoder is sized
for the real ``WhisperFeatureExtractor`` (128 mel bins, 3000 frames = 30 s, API-NOTES) so the processor pads,
counts audio tokens and expands ``<|AUDIO|>`` exactly as the hub's does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

from ser_lightning.nn.qwen2_audio.offline import (
    PUNCT,
    QWEN_SPECIAL_IDS,
    SAMPLING_RATE,
    TINY_QWEN2_AUDIO_CONFIG,
    UNK,
    WORDS,
    offline_qwen2_audio_processor,
    random_config,
    random_qwen2_audio,
)

RATE = SAMPLING_RATE
SPECIAL_TOKENS = (UNK, *QWEN_SPECIAL_IDS)
__all__ = ["PUNCT", "RATE", "SPECIAL_TOKENS", "WORDS"]  # re-exported for tests that build their own vocabularies


def tiny_qwen2_audio_config(**overrides: Any) -> Qwen2AudioConfig:
    """The tiny Qwen2-Audio of API-NOTES (hidden 32, 2 layers), its encoder sized for the real feature extractor."""
    return random_config({**TINY_QWEN2_AUDIO_CONFIG, **overrides})


def tiny_qwen2_audio_processor() -> Qwen2AudioProcessor:
    """An offline processor: the real 128-bin Whisper extractor, a word-level tokenizer, the default chat template."""
    return offline_qwen2_audio_processor(128, TINY_QWEN2_AUDIO_CONFIG["text_config"]["vocab_size"])


def tiny_qwen2_audio(seed: int = 0) -> tuple[Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor]:
    """A freshly initialised tiny model (fp32, eval mode) and its offline processor, token ids consistent."""
    return random_qwen2_audio(TINY_QWEN2_AUDIO_CONFIG, seed=seed), tiny_qwen2_audio_processor()


def write_tiny_qwen2_audio(directory: str | Path, seed: int = 0) -> Path:
    """Save the tiny model and processor to ``directory`` laid out like the hub's (``save_pretrained``)."""
    directory = Path(directory)
    model, processor = tiny_qwen2_audio(seed)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def tone(seconds: float, freq: float = 220.0, rate: int = RATE) -> np.ndarray:
    """A sine clip with a little deterministic noise, float32 in [-0.6, 0.6]."""
    t = np.arange(int(round(seconds * rate))) / rate
    noise = np.random.default_rng(int(freq)).normal(0.0, 0.05, t.shape)
    return (0.5 * np.sin(2 * math.pi * freq * t) + noise).clip(-0.6, 0.6).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_qwen2_audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the tiny Qwen2-Audio and its processor (import this fixture into a test module)."""
    return write_tiny_qwen2_audio(tmp_path_factory.mktemp("tiny_qwen2_audio"))
