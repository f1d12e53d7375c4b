"""Verifier ALMs (Sec. 4.2.3, ALM-v / W-ALM-v): a model scores each candidate answer with a number in [0, 1].

The caller builds the full verifier prompt (Appendix Table 3) per candidate; a verifier sends it with the clip and
parses the first number of the answer (``parse_score``). Two backends behind one protocol: a local Qwen2-Audio
(:class:`LocalVerifier`, which can share the ALM's already-loaded model, as the offline tests do) and any
Gemini-API-compatible endpoint (:class:`GeminiVerifier`, through :class:`~ser_lightning.alm.gemini.GeminiClient`).
A Gemini request that fails after its retries is a missing score (``failed=True``), logged and counted, never a crash.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ser_lightning.alm.distribution_parsing import parse_score
from ser_lightning.alm.prompts import chat_inputs, clip_at_rate
from ser_lightning.alm.zeroshot_prompts import verifier_conversation

__all__ = ["GeminiVerifier", "LocalVerifier", "Verifier", "VerifierScore", "VerifyRequest", "make_verifier"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyRequest:
    """One candidate to score: an id for logs, the clip and the full verifier prompt (Appendix Table 3)."""

    uid: str
    audio: np.ndarray  # float32 mono
    sample_rate: int
    prompt: str  # the full verifier prompt (Appendix Table 3), already built by the caller


@dataclass
class VerifierScore:
    """The parsed score (None when unparseable or the request failed) and the verifier's raw answer."""

    score: float | None  # parsed number in [0, 1], None when unparseable or the request failed
    raw: str
    failed: bool = False  # the request itself failed (Gemini after retries)


@runtime_checkable
class Verifier(Protocol):
    """What the ALM module needs of a verifier: scores in request order, and counts for the metrics."""

    name: str
    model: str
    stats: dict[str, int]  # requests, unparseable, failures

    def score(self, requests: Sequence[VerifyRequest]) -> list[VerifierScore]:
        """One score per request, in order."""
        ...


def _new_stats() -> dict[str, int]:
    return {"requests": 0, "unparseable": 0, "failures": 0}


class LocalVerifier:
    """A local Qwen2-Audio as the verifier: the clip and the prompt through its chat template, greedy, batched.

    Args:
        model: hub id or local directory to load (ignored for loading when ``model_and_processor`` is given).
        model_and_processor: an already loaded ``(model, processor)``, e.g. the ALM module's own backbone; it is
            neither moved nor left in another mode.
        max_new_tokens: answer length (a score is a few tokens).
        batch_size: requests per ``generate``.
        device: where to load ``model`` (default CUDA when available); a shared model stays where it is.
        dtype: weights' dtype when loading (default bf16 on CUDA, fp32 on CPU).
    """

    name = "qwen2-audio"

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        model_and_processor: tuple[Any, Any] | None = None,
        max_new_tokens: int = 8,
        batch_size: int = 8,
        device: str | None = None,
        dtype: Any = None,
    ) -> None:
        import torch

        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"batch_size and max_new_tokens must be positive, got {batch_size}, {max_new_tokens}")
        if model_and_processor is None:
            if model is None:
                raise ValueError("LocalVerifier needs a model (hub id or directory) or model_and_processor")
            from ser_lightning.nn.qwen2_audio import load_qwen2_audio

            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
            device_map = None if str(device) == "cpu" else {"": device}
            net, processor = load_qwen2_audio(model, dtype=dtype, device_map=device_map)
            net.to(torch.device(device)).eval().requires_grad_(False)
        else:
            net, processor = model_and_processor
        self.net, self.processor = net, processor
        self.model = str(model) if model is not None else str(getattr(net.config, "_name_or_path", "") or "shared")
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.sampling_rate = int(processor.feature_extractor.sampling_rate)
        self.stats = _new_stats()
        self._lock = threading.Lock()

    def _inputs(self, requests: Sequence[VerifyRequest]) -> dict[str, Any]:
        """One user turn per request (the clip, then the prompt) through the chat template, left padded."""
        from ser_lightning.alm.generation import on_model

        audios = [clip_at_rate(r.audio, r.sample_rate, self.sampling_rate) for r in requests]
        conversations = [verifier_conversation(a, r.prompt) for a, r in zip(audios, requests, strict=True)]
        return on_model(chat_inputs(self.processor, conversations, audios, self.sampling_rate, "left"), self.net)

    def score(self, requests: Sequence[VerifyRequest]) -> list[VerifierScore]:
        """Scores in request order, ``batch_size`` requests per greedy ``generate`` (one caller at a time)."""
        from ser_lightning.alm.generation import generate_candidates

        requests = list(requests)
        out: list[VerifierScore] = []
        with self._lock:
            for start in range(0, len(requests), self.batch_size):
                chunk = requests[start : start + self.batch_size]
                found = generate_candidates(
                    self.net, self.processor.tokenizer, self._inputs(chunk), max_new_tokens=self.max_new_tokens
                )
                for texts in found.texts:
                    value = parse_score(texts[0])
                    self.stats["unparseable"] += value is None
                    out.append(VerifierScore(value, texts[0]))
                self.stats["requests"] += len(chunk)
        return out


class GeminiVerifier:
    """Any Gemini-API-compatible endpoint as the verifier: prompt + inline WAV, temperature 0, no system message.

    Args:
        model: the model name at the endpoint (``GOOGLE_GEMINI_BASE_URL`` points the SDK elsewhere).
        workers: requests in flight at once (the client is thread-safe; its rate limit spans all of them).
        options: the :class:`~ser_lightning.alm.gemini.GeminiClient`'s (``api_key``, ``attempts``, ``timeout``,
            ``requests_per_second``, ...).
    """

    name = "gemini"

    def __init__(self, model: str, *, workers: int = 4, **options: Any) -> None:
        from ser_lightning.alm.gemini import GeminiClient

        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        options.setdefault("system_instruction", None)
        self.model = model
        self.workers = int(workers)
        self.client = GeminiClient(model, **options)
        self.stats = _new_stats()
        self._lock = threading.Lock()

    def _one(self, request: VerifyRequest) -> VerifierScore:
        from ser_lightning.alm.annotator import AnnotationError

        try:
            text, _ = self.client.generate(request.prompt, request.audio, request.sample_rate, temperature=0.0)
        except AnnotationError as exc:
            log.warning("verifier request %s failed, counted as a missing score: %s", request.uid, exc)
            with self._lock:
                self.stats["requests"] += 1
                self.stats["failures"] += 1
            return VerifierScore(None, "", failed=True)
        value = parse_score(text)
        with self._lock:
            self.stats["requests"] += 1
            self.stats["unparseable"] += value is None
        return VerifierScore(value, text)

    def score(self, requests: Sequence[VerifyRequest]) -> list[VerifierScore]:
        """Scores in request order, up to ``workers`` requests at once."""
        requests = list(requests)
        if self.workers == 1 or len(requests) < 2:
            return [self._one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(requests))) as pool:
            return list(pool.map(self._one, requests))

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()


def make_verifier(backend: str, model: str | None = None, **options: Any) -> Verifier:
    """The verifier by name: ``qwen2-audio`` (a local model) or ``gemini`` (any Gemini-API-compatible endpoint)."""
    if backend == "qwen2-audio":
        return LocalVerifier(model, **options)
    if backend == "gemini":
        if not model:
            raise ValueError("the gemini verifier needs a model name")
        return GeminiVerifier(model, **options)
    raise ValueError(f"unknown verifier backend {backend!r}: expected 'qwen2-audio' or 'gemini'")
