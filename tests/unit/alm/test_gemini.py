"""The Gemini backend against a local fake of the HTTP API, reached through GOOGLE_GEMINI_BASE_URL only."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import soundfile as sf
from gemini_fake import FakeGemini, Reply, blocked, burst, empty, error, malformed, ok, safety, slow

from ser_lightning.alm.annotator import AnnotationError, AnnotationRequest, AnnotatorBackend, make_backend
from ser_lightning.alm.gemini import GeminiAnnotator, RateLimiter
from ser_lightning.alm.prompts import ANNOTATION_SYSTEM_MESSAGE, annotation_prompt

CLASSES = ("Angry", "Happy", "Neutral", "Sad")
FAST = {"attempts": 3, "initial_delay": 0.01, "max_delay": 0.05, "jitter": 0.0, "timeout": 0.5}
pytestmark = pytest.mark.timeout(30)


def request(uid: str = "u1", temperature: float = 0.37, transcript: str = "leave me alone") -> AnnotationRequest:
    rng = np.random.default_rng(0)
    audio = (0.3 * rng.standard_normal(1600)).clip(-0.9, 0.9).astype(np.float32)
    return AnnotationRequest(uid, 0, audio, 16000, transcript, CLASSES, 1, temperature)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGemini]:
    with FakeGemini(default=ok("**Sad**")) as server:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        monkeypatch.setenv("GEMINI_API_KEY", "test-key")
        for name in ("GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_API_VERSION"):
            monkeypatch.delenv(name, raising=False)
        yield server


def test_request_shape(fake: FakeGemini) -> None:
    backend = GeminiAnnotator("gemini-test", **FAST)
    req = request()
    [answer] = backend.annotate([req])
    assert (answer.label, answer.reason, answer.raw, answer.tokens) == ("Sad", None, "**Sad**", 13)
    assert answer.probabilities is None
    [got] = fake.requests
    assert got.path == "/v1/models/gemini-test:generateContent"
    assert got.headers["x-goog-api-key"] == "test-key"
    assert got.body["generationConfig"] == {"temperature": 0.37, "candidateCount": 1}
    assert got.body["systemInstruction"]["parts"][0]["text"] == ANNOTATION_SYSTEM_MESSAGE
    text, audio = got.body["contents"][0]["parts"]
    assert text == {"text": annotation_prompt(req.transcript, CLASSES, 1)}
    inline = audio["inlineData"]
    assert inline.get("mimeType", inline.get("mime_type")) == "audio/wav"  # 3.6.1 sends "mime_type"
    decoded, rate = sf.read(io.BytesIO(base64.urlsafe_b64decode(inline["data"])), dtype="float32")
    assert rate == 16000
    np.testing.assert_allclose(decoded, req.audio, atol=1 / 32768 + 1e-7)  # 16-bit PCM
    assert backend.stats == {"requests": 1, "retries": 0, "failures": 0, "tokens": 13}


def test_protocol_and_make_backend(fake: FakeGemini) -> None:
    backend = make_backend("gemini", "gemini-test", attempts=2)
    assert isinstance(backend, GeminiAnnotator)
    assert isinstance(backend, AnnotatorBackend)
    assert (backend.name, backend.model, backend.mode, backend.max_batch) == ("gemini", "gemini-test", "sample", 1)
    with pytest.raises(ValueError, match="exact"):
        make_backend("gemini", "gemini-test", mode="exact")
    with pytest.raises(ValueError, match="unknown backend"):
        make_backend("openai", "gpt")


def test_missing_api_key_is_a_clear_error(fake: FakeGemini, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY")
    with pytest.raises(RuntimeError, match="GEMINI_API_KEY"):
        GeminiAnnotator("gemini-test")
    monkeypatch.setenv("GOOGLE_API_KEY", "other-key")
    GeminiAnnotator("gemini-test", **FAST).annotate([request()])
    assert fake.requests[-1].headers["x-goog-api-key"] == "other-key"


@pytest.mark.parametrize(
    ("script", "retries"),
    [
        pytest.param(burst(429, 2), 2, id="429-burst"),
        pytest.param([error(500)], 1, id="500"),
        pytest.param([error(503), error(504)], 2, id="503-504"),
        pytest.param([slow(3.0, "Happy")], 1, id="timeout"),
    ],
)
def test_transient_errors_are_retried(fake: FakeGemini, script: list[Reply], retries: int) -> None:
    fake.push(*script)
    backend = GeminiAnnotator("gemini-test", **FAST)
    start = time.monotonic()
    [answer] = backend.annotate([request()])
    assert time.monotonic() - start < 2.5  # the slow reply was abandoned, not awaited
    assert answer.label == "Sad"
    assert fake.count == retries + 1
    assert backend.stats["requests"] == 1
    assert backend.stats["retries"] == retries
    assert backend.stats["failures"] == 0


def test_back_off_grows_exponentially(fake: FakeGemini) -> None:
    fake.push(*burst(429, 3))
    backend = GeminiAnnotator("gemini-test", **{**FAST, "attempts": 4, "initial_delay": 0.1, "max_delay": 1.0})
    backend.annotate([request()])
    gaps = np.diff([r.time for r in fake.requests])
    assert gaps[0] >= 0.09
    assert gaps[1] >= 0.19
    assert gaps[2] >= 0.39


@pytest.mark.parametrize(
    ("reply", "raw", "reason"),
    [
        (malformed("I cannot tell."), "I cannot tell.", "no class name in the answer"),
        (ok("Angry, or maybe Sad"), "Angry, or maybe Sad", "several class names in the answer: Angry, Sad"),
        (ok("   "), "   ", "empty answer (finish reason STOP)"),
        (safety(), "", "empty answer (finish reason SAFETY)"),
        (blocked("PROHIBITED_CONTENT"), "", "prompt blocked: PROHIBITED_CONTENT"),
        (empty(), "", "no candidate in the response"),
    ],
)
def test_malformed_answers_are_answers(fake: FakeGemini, reply: Reply, raw: str, reason: str) -> None:
    fake.push(reply)
    backend = GeminiAnnotator("gemini-test", **FAST)
    [answer] = backend.annotate([request()])
    assert (answer.label, answer.raw, answer.reason) == (None, raw, reason)
    assert fake.count == 1
    assert backend.stats["failures"] == 0


@pytest.mark.parametrize(
    ("script", "attempts", "match"),
    [
        pytest.param(burst(429, 3), 3, "429", id="429-exhausted"),
        pytest.param(burst(500, 3), 3, "500", id="500-exhausted"),
        pytest.param([slow(2.0)] * 3, 3, "Timeout", id="timeouts-exhausted"),
        pytest.param([error(400)], 1, "400", id="400-not-retried"),
        pytest.param([error(403)], 1, "403", id="403-not-retried"),
        pytest.param([Reply(200, raw=b"<html>proxy error</html>")], 1, "JSONDecodeError", id="not-json"),
    ],
)
def test_final_failure_raises(fake: FakeGemini, script: list[Reply], attempts: int, match: str) -> None:
    fake.push(*script)
    backend = GeminiAnnotator("gemini-test", **FAST)
    with pytest.raises(AnnotationError, match=match):
        backend.annotate([request()])
    assert fake.count == attempts
    assert backend.stats == {"requests": 1, "retries": attempts - 1, "failures": 1, "tokens": 0}
    assert backend.annotate([request()])[0].label == "Sad"  # the client is still usable afterwards


def test_rate_limit_across_threads(fake: FakeGemini) -> None:
    backend = GeminiAnnotator("gemini-test", **FAST, requests_per_second=20.0, burst=1)
    fake.default = lambda got: ok("Happy" if "happy" in got.text else "Sad")
    reqs = [request(f"u{i}", transcript="so happy" if i % 2 else "leave me") for i in range(12)]
    answers: dict[str, str | None] = {}

    def work(chunk: list[AnnotationRequest]) -> None:
        for r in chunk:
            answers[r.uid] = backend.annotate([r])[0].label

    start = time.monotonic()
    threads = [threading.Thread(target=work, args=(reqs[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    assert elapsed >= 11 / 20 - 0.02  # 12 requests, one token per 50 ms after the first
    assert answers == {f"u{i}": "Happy" if i % 2 else "Sad" for i in range(12)}
    assert backend.stats["requests"] == fake.count == 12
    arrivals = np.sort([r.time for r in fake.requests])
    assert arrivals[-1] - arrivals[0] >= 11 / 20 - 0.03


def test_rate_limit_applies_to_retries(fake: FakeGemini) -> None:
    fake.push(error(429))
    backend = GeminiAnnotator("gemini-test", **{**FAST, "initial_delay": 0.0}, requests_per_second=5.0)
    backend.annotate([request()])
    first, second = (r.time for r in fake.requests)
    assert second - first >= 0.2 - 0.02


def test_token_bucket_timing() -> None:
    limiter = RateLimiter(50.0, burst=3)
    start = time.monotonic()
    waits = [limiter.acquire() for _ in range(13)]
    elapsed = time.monotonic() - start
    assert waits[:3] == [0.0, 0.0, 0.0]  # the burst goes out at once
    assert 10 / 50 - 0.01 <= elapsed < 10 / 50 + 0.5
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(0.0)


def test_run_seed_is_sent_per_request(fake: FakeGemini) -> None:
    backend = GeminiAnnotator("gemini-test", **FAST, seed=7)
    backend.annotate([request("u1"), request("u2"), request("u1")])
    seeds = [r.body["generationConfig"]["seed"] for r in fake.requests]
    assert seeds[0] == seeds[2] != seeds[1]
    assert all(0 <= s < 2**31 for s in seeds)
