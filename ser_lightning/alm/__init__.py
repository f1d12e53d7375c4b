"""Audio-language models: prompts, the processor inputs they need, annotator clients and answer parsing.

The backends themselves (``alm.gemini``, ``alm.qwen2_audio_annotator``) load lazily through :func:`make_backend`.
"""

from ser_lightning.alm.aggregation import candidate_mixture, dirichlet_mixture_mean, score_weights, select_best
from ser_lightning.alm.annotator import (
    AnnotationAnswer,
    AnnotationError,
    AnnotationRequest,
    AnnotatorBackend,
    make_backend,
)
from ser_lightning.alm.distribution_parsing import PARSE_STRATEGIES, match_class, parse_distribution, parse_score
from ser_lightning.alm.features import Qwen2AudioFeatures
from ser_lightning.alm.generation import Candidates, generate_candidates, next_token_distribution
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
from ser_lightning.alm.verifier import (
    GeminiVerifier,
    LocalVerifier,
    Verifier,
    VerifierScore,
    VerifyRequest,
    make_verifier,
)
from ser_lightning.alm.zeroshot_prompts import (
    IEMOCAP_BACKGROUND,
    verifier_conversation,
    verifier_prompt,
    zeroshot_conversation,
    zeroshot_prompt,
)

__all__ = [
    "ANNOTATION_SYSTEM_MESSAGE",
    "DISTRIBUTION_SYSTEM_MESSAGE",
    "IEMOCAP_BACKGROUND",
    "PARSE_STRATEGIES",
    "PERSONAS",
    "AnnotationAnswer",
    "AnnotationError",
    "AnnotationRequest",
    "AnnotatorBackend",
    "Candidates",
    "GeminiVerifier",
    "LocalVerifier",
    "Qwen2AudioFeatures",
    "Verifier",
    "VerifierScore",
    "VerifyRequest",
    "annotation_conversation",
    "annotation_prompt",
    "candidate_mixture",
    "dirichlet_mixture_mean",
    "distribution_conversation",
    "distribution_prompt",
    "generate_candidates",
    "make_backend",
    "make_verifier",
    "match_class",
    "next_token_distribution",
    "parse_distribution",
    "parse_label",
    "parse_score",
    "qwen2_audio_inputs",
    "score_weights",
    "select_best",
    "verifier_conversation",
    "verifier_prompt",
    "zeroshot_conversation",
    "zeroshot_prompt",
]
