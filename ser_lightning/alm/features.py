"""Qwen2-Audio processor inputs for a collated batch, computed where decoding runs (the DataModule's workers).

The model hands a :class:`Qwen2AudioFeatures` to the DataModule (``data_requirements()["batch_transform"]``), as
other models hand over a tokenizer; the DataModule applies it to each collated batch inside its loader workers,
so mel features and token ids are ready when the batch reaches the GPU. It pickles without the processor and
rebuilds it lazily in each worker from the backbone (hub id or local directory) or the offline processor.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from ser_lightning.alm.prompts import chat_inputs, qwen2_audio_inputs
from ser_lightning.types import Batch

FEATURE_KEYS = ("input_ids", "attention_mask", "input_features", "feature_attention_mask")


class Qwen2AudioFeatures:
    """Batch transform: ``audio``, ``audio_mask``, ``transcripts`` (and ``speakers``) -> Qwen2-Audio inputs.

    Args:
        classes: the shards' class names, in order (the prompt's VALID EMOTIONS LIST).
        backbone: hub id or local directory whose processor to use; ``None`` uses the offline processor.
        sampling_rate: rate of ``batch["audio"]``; must be the feature extractor's (16 kHz).
        num_mel_bins: mel bins of the offline processor (``backbone=None``).
        vocab_size: vocabulary size of the offline processor (``backbone=None``).
        processor: an already built processor to use in this process (dropped when pickled if it can be rebuilt).
    """

    def __init__(
        self,
        classes: Sequence[str],
        backbone: str | Path | None = None,
        sampling_rate: int = 16000,
        num_mel_bins: int = 128,
        vocab_size: int = 128,
        processor: Any | None = None,
    ) -> None:
        if len(classes) < 2:
            raise ValueError(f"need at least two class names, got {list(classes)}")
        self.classes = list(classes)
        self.backbone = None if backbone is None else str(backbone)
        self.sampling_rate = sampling_rate
        self.num_mel_bins = num_mel_bins
        self.vocab_size = vocab_size
        self._processor = processor

    @property
    def processor(self) -> Any:
        """The processor, built on first use (in each loader worker)."""
        if self._processor is None:
            from ser_lightning.nn.qwen2_audio import load_processor, offline_qwen2_audio_processor

            if self.backbone is not None:
                self._processor = load_processor(self.backbone)
            else:
                self._processor = offline_qwen2_audio_processor(self.num_mel_bins, self.vocab_size)
        return self._processor

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the processor: workers rebuild it (cheap, and keeps the pickle small)."""
        state = self.__dict__.copy()
        state["_processor"] = None
        return state

    def __call__(self, batch: Batch) -> dict[str, Tensor]:
        """``input_ids``, ``attention_mask`` (right padded), ``input_features``, ``feature_attention_mask``."""
        audios = batch_clips(batch)
        size = len(audios)
        transcripts = list(batch.get("transcripts") or [""] * size)
        speakers = list(batch.get("speakers") or [""] * size)
        out = qwen2_audio_inputs(self.processor, audios, transcripts, speakers, self.classes, self.sampling_rate)
        return {key: out[key] for key in FEATURE_KEYS}


def batch_clips(batch: Batch) -> list[np.ndarray]:
    """The valid part of each clip of a collated batch (``audio`` cut at ``audio_mask``), float32 numpy."""
    audio, mask = batch["audio"], batch["audio_mask"]
    lengths = mask.sum(-1).tolist()
    return [np.asarray(audio[i, : int(n)].float().cpu().numpy(), dtype=np.float32) for i, n in enumerate(lengths)]


class ZeroShotFeatures(Qwen2AudioFeatures):
    """Batch transform for zero-shot ALM inference: the prompt of the chosen strategy, LEFT padded for generation.

    ``base`` / ``bon`` / ``wbon`` / ``verifier`` / ``wverifier`` ask with the plain prompt of paper 003's Appendix
    Table 1, ``cot`` with Table 2's; ``exact`` with Table 1 of the Scaling Ambiguity paper (the annotator's
    single-label prompt, persona ``persona``), whose first answer token is a class name.

    Args:
        classes: the names the prompt lists and the answer is parsed against (the model's ``prompt_classes``).
        strategy: the test-time strategy (see :class:`ser_lightning.models.ALMDistribution`).
        target: ``utterance`` or ``audio`` (A.1's CREMA-D wording).
        background: the Background row (``None`` leaves it out).
        persona: the annotation persona of ``exact``.
        backbone, sampling_rate, num_mel_bins, vocab_size, processor: as :class:`Qwen2AudioFeatures`.
    """

    def __init__(
        self,
        classes: Sequence[str],
        strategy: str = "base",
        target: str = "utterance",
        background: str | None = None,
        persona: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(classes, **kwargs)
        self.strategy = strategy
        self.target = target
        self.background = background
        self.persona = persona

    def conversation(self, audio: np.ndarray, transcript: str | None) -> list[dict[str, Any]]:
        """The chat messages of one utterance under this strategy."""
        if self.strategy == "exact":
            from ser_lightning.alm.prompts import annotation_conversation

            return annotation_conversation(audio, transcript, self.classes, self.persona)
        from ser_lightning.alm.zeroshot_prompts import zeroshot_conversation

        return zeroshot_conversation(
            audio,
            transcript,
            self.classes,
            cot=self.strategy == "cot",
            target=self.target,
            background=self.background,
        )

    def __call__(self, batch: Batch) -> dict[str, Tensor]:
        """``input_ids``, ``attention_mask`` (left padded), ``input_features``, ``feature_attention_mask``."""
        audios = batch_clips(batch)
        transcripts = list(batch.get("transcripts") or [""] * len(audios))
        conversations = [self.conversation(a, t) for a, t in zip(audios, transcripts, strict=True)]
        out = chat_inputs(self.processor, conversations, audios, self.sampling_rate, padding_side="left")
        return {key: out[key] for key in FEATURE_KEYS}
