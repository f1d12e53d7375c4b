"""The interface every ALM annotator backend implements: one request per (utterance, k), one answer back.

Shared by ``ser_lightning.annotate`` (the tool) and the backends in ``alm.gemini`` and ``alm.qwen2_audio_annotator``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "AnnotationAnswer",
    "AnnotationError",
    "AnnotationRequest",
    "AnnotatorBackend",
    "make_backend",
    "request_seed",
]


class AnnotationError(RuntimeError):
    """A request finally failed (after the SDK's retries): nothing to store, ask again on the next run."""


@dataclass(frozen=True)
class AnnotationRequest:
    """One question: annotation ``k`` of utterance ``uid`` with its persona (index into PERSONAS) and temperature."""

    uid: str
    k: int
    audio: np.ndarray  # float32 mono
    sample_rate: int
    transcript: str
    classes: tuple[str, ...]
    persona: int
    temperature: float


@dataclass
class AnnotationAnswer:
    """One answer: a class name or None (with ``reason``), the raw text, exact-mode probabilities, tokens used."""

    label: str | None
    probabilities: list[float] | None
    raw: str
    reason: str | None
    tokens: int | None = None


@runtime_checkable
class AnnotatorBackend(Protocol):
    """An ALM that answers annotation requests; ``annotate`` raises AnnotationError when a request finally failed."""

    name: str  # "gemini" | "qwen2-audio"
    model: str
    mode: str  # "sample" | "exact"
    max_batch: int  # 1 for gemini
    stats: dict[str, int]  # requests, retries, failures, tokens

    def annotate(self, requests: Sequence[AnnotationRequest]) -> list[AnnotationAnswer]:
        """Answers in request order (thread-safe for gemini)."""
        ...


def request_seed(seed: int, uid: str, k: int) -> int:
    """A 63-bit seed from ``(seed, uid, k)``, stable across processes (no Python ``hash`` salting)."""
    digest = hashlib.sha256(f"{seed}\x1f{uid}\x1f{k}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def make_backend(backend: str, model: str, mode: str = "sample", **options: Any) -> AnnotatorBackend:
    """The backend by name: ``gemini`` (google-genai, sample mode only) or ``qwen2-audio`` (local, sample or exact)."""
    if mode not in ("sample", "exact"):
        raise ValueError(f"mode must be 'sample' or 'exact', got {mode!r}")
    if backend == "gemini":
        if mode != "sample":
            raise ValueError("the gemini backend only samples answers (mode='sample'); exact needs the local model")
        from ser_lightning.alm.gemini import GeminiAnnotator

        return GeminiAnnotator(model=model, **options)
    if backend == "qwen2-audio":
        from ser_lightning.alm.qwen2_audio_annotator import Qwen2AudioAnnotator

        return Qwen2AudioAnnotator(model=model, mode=mode, **options)
    raise ValueError(f"unknown backend {backend!r}: expected 'gemini' or 'qwen2-audio'")
