"""Audio-language models: prompts, the processor inputs they need, annotator clients and answer parsing.

The backends themselves (``alm.gemini``, ``alm.local``) load lazily through :func:`make_backend`.
"""

from ser_lightning.alm.annotator import (
    AnnotationAnswer,
    AnnotationError,
    AnnotationRequest,
    AnnotatorBackend,
    make_backend,
)
from ser_lightning.alm.features import Qwen2AudioFeatures
from ser_lightning.alm.parsing import parse_label
from ser_lightning.alm.prompts import (
    ANNOTATION_SYSTEM_MESSAGE,
    DISTRIBUTION_SYSTEM_MESSAGE,
    PERSONAS,
    annotation_conversation,
    annotation_prompt,
    distribution_conversation,
    distribution_prompt,
    qwen2_audio_inputs,
)

__all__ = [
    "ANNOTATION_SYSTEM_MESSAGE",
    "DISTRIBUTION_SYSTEM_MESSAGE",
    "PERSONAS",
    "AnnotationAnswer",
    "AnnotationError",
    "AnnotationRequest",
    "AnnotatorBackend",
    "Qwen2AudioFeatures",
    "annotation_conversation",
    "annotation_prompt",
    "distribution_conversation",
    "distribution_prompt",
    "make_backend",
    "parse_label",
    "qwen2_audio_inputs",
]
