"""The Gemini annotator: Table 1's prompt and the clip (inline WAV) through google-genai, one label per request.

As the authors' notebook (``call_gemini_with_audio`` in synthetic_annotation_generation.ipynb): prompt text then
audio, their system instruction, the request's temperature. Unlike it, retries are the SDK's (``HttpRetryOptions``:
exponential back-off with jitter on 408/429/5xx and timeouts), every HTTP attempt passes a token-bucket rate limit,
and a request that finally fails raises :class:`AnnotationError` instead of returning None, so the tool asks again
later rather than storing a gap. No base URL is set here: the SDK reads ``GOOGLE_GEMINI_BASE_URL``, so a compatible
endpoint or a local fake needs no code change. :class:`GeminiClient` holds that HTTP machinery; the verifier
(``alm.verifier.GeminiVerifier``) reuses it.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import soundfile as sf

from ser_lightning.alm.annotator import AnnotationAnswer, AnnotationError, AnnotationRequest, request_seed
from ser_lightning.alm.parsing import parse_label
from ser_lightning.alm.prompts import ANNOTATION_SYSTEM_MESSAGE, annotation_prompt

__all__ = [
    "GeminiAnnotator",
    "GeminiClient",
    "RateLimiter",
    "answer_from_response",
    "gemini_api_key",
    "response_text",
    "response_tokens",
    "wav_bytes",
]


def gemini_api_key(api_key: str | None = None) -> str:
    """The key given, else ``GOOGLE_API_KEY``, else ``GEMINI_API_KEY`` (the SDK's order); a clear error if none."""
    key = api_key or os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY")
    if not key:
        raise RuntimeError(
            "the gemini backend needs an API key: set GEMINI_API_KEY (or GOOGLE_API_KEY) in the environment"
        )
    return key


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """A 16-bit PCM WAV file of a mono float clip (what the authors uploaded: the corpus' WAV files)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(audio, dtype=np.float32).reshape(-1), int(sample_rate), format="WAV", subtype="PCM_16")
    return buffer.getvalue()


class RateLimiter:
    """A thread-safe token bucket: at most ``rate`` acquisitions per second on average, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int = 1) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        self.rate = float(rate)
        self.capacity = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, sleeping until one is there; returns the seconds waited."""
        with self._lock:  # reserve under the lock, sleep outside it: waiters queue up in order of arrival
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1.0
            wait = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
        if wait > 0:
            time.sleep(wait)
        return wait


class GeminiClient:
    """The HTTP side of a Gemini model: retries, rate limit, failure types and counts; thread-safe.

    Args:
        model: the Gemini model name (the paper: ``gemini-2.5-pro``).
        api_key: overrides ``GEMINI_API_KEY`` / ``GOOGLE_API_KEY``.
        attempts: HTTP attempts per request including the first (the SDK's ``HttpRetryOptions.attempts``).
        initial_delay: first back-off in seconds; it grows by ``exp_base`` per retry up to ``max_delay``.
        max_delay: longest back-off in seconds.
        exp_base: back-off multiplier.
        jitter: random extra back-off in seconds (0 for reproducible timings in tests).
        timeout: seconds per HTTP attempt (the SDK takes milliseconds).
        requests_per_second: rate limit over all threads and all attempts (retries included); ``None`` = none.
        burst: how many attempts may go out at once after an idle spell.
        system_instruction: the system message; ``None`` sends none.
        max_output_tokens: cap on the answer; ``None`` leaves the model's (thinking models spend tokens thinking).
    """

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        attempts: int = 6,
        initial_delay: float = 2.0,
        max_delay: float = 120.0,
        exp_base: float = 2.0,
        jitter: float = 1.0,
        timeout: float = 180.0,
        requests_per_second: float | None = None,
        burst: int = 1,
        system_instruction: str | None = None,
        max_output_tokens: int | None = None,
    ) -> None:
        try:
            from google import genai
            from google.genai import errors, types
        except ImportError as exc:  # pragma: no cover - the gemini extra is missing
            raise ImportError("the gemini backend needs google-genai: pip install 'ser-lightning[gemini]'") from exc
        try:  # google-genai 3.x uses httpx2 (API-NOTES), 2.x httpx
            import httpx2 as http
        except ImportError:  # pragma: no cover
            import httpx as http

        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        self.model = model
        self.stats: dict[str, int] = {"requests": 0, "retries": 0, "failures": 0, "tokens": 0}
        self.system_instruction = system_instruction
        self.max_output_tokens = max_output_tokens
        self.limiter = RateLimiter(requests_per_second, burst) if requests_per_second else None
        self._lock = threading.Lock()
        self._types = types
        # Timeouts and connection errors are not APIError (API-NOTES); a 200 whose body is not JSON (a proxy's
        # error page) is a failed request too, asked again on the next run.
        self._failures = (errors.APIError, http.HTTPError, json.JSONDecodeError)
        retry = types.HttpRetryOptions(
            attempts=attempts, initial_delay=initial_delay, max_delay=max_delay, exp_base=exp_base, jitter=jitter
        )
        # No base_url: the SDK honours GOOGLE_GEMINI_BASE_URL. The request hook sees every HTTP attempt, retries
        # included: it applies the rate limit and counts attempts (retries = attempts - requests).
        options = types.HttpOptions(
            timeout=int(round(timeout * 1000)),
            retry_options=retry,
            client_args={"event_hooks": {"request": [self._before_attempt]}},
        )
        self._attempts = 0
        self._client = genai.Client(api_key=gemini_api_key(api_key), vertexai=False, http_options=options)

    def _before_attempt(self, request: Any) -> None:
        """The HTTP client's request hook: wait for the rate limit, count the attempt."""
        if self.limiter is not None:
            self.limiter.acquire()
        with self._lock:
            self._attempts += 1

    def _count(self, key: str, value: int = 1) -> None:
        with self._lock:
            self.stats[key] += value

    def _sync_retries(self) -> None:
        with self._lock:
            self.stats["retries"] = max(0, self._attempts - self.stats["requests"])

    def response(
        self,
        prompt: str,
        audio: np.ndarray,
        sample_rate: int,
        *,
        temperature: float = 0.0,
        seed: int | None = None,
        what: str = "gemini request",
    ) -> Any:
        """The SDK's response to the prompt text then the clip as inline WAV (the notebook's order), one candidate.

        Raises AnnotationError (``what`` names the request) when the SDK's retries are exhausted or the error is not
        retryable.
        """
        types = self._types
        part = types.Part.from_bytes(data=wav_bytes(audio, sample_rate), mime_type="audio/wav")
        contents = [types.Content(role="user", parts=[types.Part.from_text(text=prompt), part])]
        config = types.GenerateContentConfig(
            system_instruction=self.system_instruction,
            temperature=float(temperature),
            candidate_count=1,
            max_output_tokens=self.max_output_tokens,
            seed=seed,
        )
        self._count("requests")
        try:
            response = self._client.models.generate_content(model=self.model, contents=contents, config=config)
        except self._failures as exc:
            self._count("failures")
            code = getattr(exc, "code", None)
            reason = f"{code} {exc}" if isinstance(code, int) else f"{type(exc).__name__}: {exc}"
            raise AnnotationError(f"{what} failed: {reason}") from exc
        finally:
            self._sync_retries()
        tokens = response_tokens(response)
        if tokens:
            self._count("tokens", tokens)
        return response

    def generate(
        self, prompt: str, audio: np.ndarray, sample_rate: int, *, temperature: float = 0.0, seed: int | None = None
    ) -> tuple[str, int | None]:
        """The first candidate's text (its non-thought parts; "" when none) and the total tokens of one request.

        Raises AnnotationError when the request finally fails.
        """
        response = self.response(prompt, audio, sample_rate, temperature=temperature, seed=seed)
        return response_text(response), response_tokens(response)

    def close(self) -> None:
        """Close the SDK's HTTP client."""
        self._client.close()


class GeminiAnnotator:
    """Gemini through google-genai (``make_backend("gemini", model)``); ``annotate`` is thread-safe.

    Args:
        model: the Gemini model name (the paper: ``gemini-2.5-pro``).
        system_instruction: the system message (the authors' by default; ``None`` sends none).
        seed: when given, each request sends ``generationConfig.seed`` derived from ``(seed, uid, k)``, so a re-run
            asks with the same seed (the API calls its seeding best effort); ``None`` sends none, as the authors.
        options: the :class:`GeminiClient`'s (``api_key``, ``attempts``, ``initial_delay``, ``max_delay``,
            ``exp_base``, ``jitter``, ``timeout``, ``requests_per_second``, ``burst``, ``max_output_tokens``).
    """

    name = "gemini"
    mode = "sample"
    max_batch = 1

    def __init__(
        self,
        model: str,
        *,
        system_instruction: str | None = ANNOTATION_SYSTEM_MESSAGE,
        seed: int | None = None,
        **options: Any,
    ) -> None:
        self.model = model
        self.seed = seed
        self.client = GeminiClient(model, system_instruction=system_instruction, **options)
        self.stats = self.client.stats  # requests, retries, failures, tokens

    def annotate_one(self, request: AnnotationRequest) -> AnnotationAnswer:
        """One request; raises AnnotationError when the SDK's retries are exhausted or the error is not retryable."""
        seed = None if self.seed is None else request_seed(self.seed, request.uid, request.k) & 0x7FFFFFFF  # int32
        prompt = annotation_prompt(request.transcript, request.classes, request.persona)
        response = self.client.response(
            prompt,
            request.audio,
            request.sample_rate,
            temperature=request.temperature,
            seed=seed,
            what=f"gemini request {request.uid}/{request.k}",
        )
        return answer_from_response(response, request.classes)

    def annotate(self, requests: Sequence[AnnotationRequest]) -> list[AnnotationAnswer]:
        """Answers in request order, one API call each (``max_batch`` is 1; threads give the concurrency)."""
        return [self.annotate_one(r) for r in requests]

    def close(self) -> None:
        """Close the SDK's HTTP client."""
        self.client.close()


def response_tokens(response: Any) -> int | None:
    """The response's ``usage_metadata.total_token_count`` (None when absent)."""
    usage = getattr(response, "usage_metadata", None)
    return getattr(usage, "total_token_count", None) if usage is not None else None


def response_text(response: Any) -> str:
    """The first candidate's non-thought text parts joined; "" for no candidate or a candidate without content."""
    candidates = response.candidates or []
    if not candidates or candidates[0].content is None or not candidates[0].content.parts:
        return ""
    return "".join(p.text for p in candidates[0].content.parts if p.text and not p.thought)


def answer_from_response(response: Any, classes: Sequence[str]) -> AnnotationAnswer:
    """The first candidate's text parsed to a label; a blocked prompt or an empty/SAFETY candidate is label None."""
    tokens = response_tokens(response)
    candidates = response.candidates or []
    if not candidates:
        feedback = getattr(response, "prompt_feedback", None)
        block = getattr(feedback, "block_reason", None) if feedback is not None else None
        reason = f"prompt blocked: {_enum_name(block)}" if block else "no candidate in the response"
        return AnnotationAnswer(None, None, "", reason, tokens)
    candidate = candidates[0]
    raw = response_text(response)
    if not raw.strip():
        finish = _enum_name(candidate.finish_reason) if candidate.finish_reason else "unknown"
        return AnnotationAnswer(None, None, raw, f"empty answer (finish reason {finish})", tokens)
    label, reason = parse_label(raw, classes)
    return AnnotationAnswer(label, None, raw, reason, tokens)


def _enum_name(value: Any) -> str:
    """``FinishReason.SAFETY`` -> ``SAFETY`` (plain strings pass through)."""
    return str(getattr(value, "name", value))
