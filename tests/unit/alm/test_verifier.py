"""Verifier ALMs: a local tiny Qwen2-Audio (shared model, batched) and a Gemini-compatible endpoint (local fake)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from gemini_fake import FakeGemini, Reply, burst, ok
from qwen2_fixtures import RATE, tiny_qwen2_audio_dir, tiny_qwen2_audio_processor, tone  # noqa: F401 (fixture)
from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

from ser_lightning.alm.gemini import GeminiClient
from ser_lightning.alm.verifier import (
    GeminiVerifier,
    LocalVerifier,
    Verifier,
    VerifierScore,
    VerifyRequest,
    make_verifier,
)
from ser_lightning.nn.qwen2_audio.offline import TINY_QWEN2_AUDIO_CONFIG, random_qwen2_audio

EOS = 3  # <|im_end|> in the offline vocabulary
FAST = {"attempts": 2, "initial_delay": 0.01, "max_delay": 0.05, "jitter": 0.0, "timeout": 2.0}
pytestmark = pytest.mark.timeout(120)


def short_tiny() -> tuple[torch.nn.Module, Qwen2AudioProcessor]:
    """The tiny model with a 1 s encoder window; its tokenizer also knows the words "0.25" and "1.7"."""
    audio = {**TINY_QWEN2_AUDIO_CONFIG["audio_config"], "max_source_positions": 50}
    model = random_qwen2_audio({**TINY_QWEN2_AUDIO_CONFIG, "audio_config": audio}, seed=0)
    tokenizer = tiny_qwen2_audio_processor().tokenizer
    tokenizer.add_tokens(["0.25", "1.7"])  # ids 120, 121 < the model's 128
    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=RATE, chunk_length=1)
    return model, Qwen2AudioProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def req(uid: str, prompt: str, seconds: float = 0.5, rate: int = RATE) -> VerifyRequest:
    return VerifyRequest(uid, tone(seconds, 150 + 50 * len(uid), rate), rate, prompt)


REQUESTS = [
    req("a", "i am so happy", 0.3),
    req("bb", "leave me alone", 0.9),
    req("ccc", "so happy today", 0.5, rate=8000),  # resampled to the extractor's 16 kHz
    req("dddd", "the speaker", 0.6),
]


class Script:
    """A forward hook that makes the model answer "0.25" to prompts with "happy", "1.7" to "alone", then EOS.

    It also records each prefill's valid mel frames: the clip reached the model.
    """

    def __init__(self, processor: Qwen2AudioProcessor) -> None:
        vocab = processor.tokenizer.get_vocab()
        self.happy, self.alone = vocab["happy"], vocab["alone"]
        self.low, self.high = vocab["0.25"], vocab["1.7"]
        self.frames: list[int] = []

    def __call__(self, module, args, kwargs, output):  # noqa: ANN001, ANN204 (torch hook)
        ids, logits = kwargs["input_ids"], output.logits
        if ids.shape[1] == 1:  # a decoding step: stop
            logits[:, -1, EOS] += 1e4
            return output
        self.frames += kwargs["feature_attention_mask"].sum(dim=1).tolist()
        for row in range(ids.shape[0]):
            if (ids[row] == self.happy).any():
                logits[row, -1, self.low] += 1e4
            elif (ids[row] == self.alone).any():
                logits[row, -1, self.high] += 1e4
        return output


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, Qwen2AudioProcessor]:
    return short_tiny()


def test_local_verifier_scores_parsed_answers(tiny) -> None:
    model, processor = tiny
    script = Script(processor)
    handle = model.register_forward_hook(script, with_kwargs=True)
    try:
        model.train()  # the module's mode must come back as it was
        verifier = LocalVerifier(model_and_processor=(model, processor), batch_size=3, max_new_tokens=4)
        got = verifier.score(REQUESTS)
    finally:
        handle.remove()
    assert model.training
    assert isinstance(verifier, Verifier)
    assert (verifier.name, verifier.batch_size, verifier.max_new_tokens) == ("qwen2-audio", 3, 4)
    assert [g.score for g in got[:3]] == [0.25, None, 0.25]
    assert [g.raw for g in got[:3]] == ["0.25", "1.7", "0.25"]  # 1.7 is out of [0, 1]: unparseable
    assert not any(g.failed for g in got)
    assert got[3].score is None or 0.0 <= got[3].score <= 1.0
    assert verifier.stats == {"requests": 4, "unparseable": 1 + (got[3].score is None), "failures": 0}
    # 10 ms mel hops: 0.3 s, 0.9 s, 0.5 s (sent at 8 kHz: 25 frames unless resampled), 0.6 s
    assert script.frames == [30, 90, 50, 60]


def test_local_batching_equals_one_by_one(tiny) -> None:
    model, processor = tiny
    model.eval()
    batched = LocalVerifier(model_and_processor=(model, processor), batch_size=4).score(REQUESTS)
    single = LocalVerifier(model_and_processor=(model, processor), batch_size=1)
    alone = single.score(REQUESTS)
    assert [(s.score, s.raw) for s in alone] == [(s.score, s.raw) for s in batched]
    assert single.stats["requests"] == 4
    assert all(s.score is None or 0.0 <= s.score <= 1.0 for s in alone)
    assert single.stats["unparseable"] == sum(s.score is None for s in alone)


def test_local_verifier_loads_a_directory(tiny_qwen2_audio_dir: Path) -> None:  # noqa: F811 (fixture)
    verifier = make_verifier("qwen2-audio", str(tiny_qwen2_audio_dir), max_new_tokens=2, device="cpu")
    assert isinstance(verifier, LocalVerifier)
    assert verifier.model == str(tiny_qwen2_audio_dir)
    [answer] = verifier.score([req("a", "how likely is it", 1.0)])
    assert isinstance(answer, VerifierScore)
    assert verifier.stats["requests"] == 1
    with pytest.raises(ValueError, match="needs a model"):
        LocalVerifier()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGemini]:
    with FakeGemini(default=ok("0.5")) as server:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        monkeypatch.setenv("GEMINI_API_KEY", "test-key")
        for name in ("GOOGLE_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_API_VERSION"):
            monkeypatch.delenv(name, raising=False)
        yield server


def thinking(answer: str) -> Reply:
    """A thinking model's reply: a thought part, then the answer."""
    parts = [{"text": "Let me think: 0.9 maybe.", "thought": True}, {"text": answer}]
    return Reply(200, {"candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": "STOP"}]})


def test_gemini_verifier_scores_failures_and_unparseable(fake: FakeGemini) -> None:
    fake.push(ok("0.8"), ok("about 0.3"), ok("1.7"), *burst(500, FAST["attempts"]), thinking("0.6"))
    verifier = make_verifier("gemini", "verifier-test", workers=1, **FAST)
    assert isinstance(verifier, GeminiVerifier)
    assert isinstance(verifier, Verifier)
    requests = [*REQUESTS, req("e", "and the last")]
    got = verifier.score(requests)
    assert [g.score for g in got] == [0.8, 0.3, None, None, 0.6]
    assert [g.failed for g in got] == [False, False, False, True, False]
    assert [g.raw for g in got] == ["0.8", "about 0.3", "1.7", "", "0.6"]
    assert verifier.stats == {"requests": 5, "unparseable": 1, "failures": 1}
    assert verifier.client.stats["retries"] == FAST["attempts"] - 1
    assert fake.count == 4 + FAST["attempts"]
    first = fake.requests[0]
    assert first.path == "/v1/models/verifier-test:generateContent"
    assert first.text == REQUESTS[0].prompt
    assert first.body["generationConfig"] == {"temperature": 0.0, "candidateCount": 1}
    assert "systemInstruction" not in first.body
    for received, request in zip(fake.requests[:3], requests, strict=False):
        [(mime, data)] = received.audio
        assert mime == "audio/wav"
        decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
        assert rate == request.sample_rate
        np.testing.assert_allclose(decoded, request.audio, atol=1 / 32768 + 1e-7)  # 16-bit PCM
    assert base64.urlsafe_b64decode(first.body["contents"][0]["parts"][1]["inlineData"]["data"])[:4] == b"RIFF"
    verifier.close()


def test_gemini_verifier_concurrent_keeps_order(fake: FakeGemini) -> None:
    fake.default = lambda got: ok(f"{int(got.text.split('#')[1]) / 100:.2f}")
    verifier = GeminiVerifier("verifier-test", workers=4, **FAST)
    requests = [req(f"u{i}", f"score #{i}", 0.1) for i in range(12)]
    got = verifier.score(requests)
    assert [g.score for g in got] == [i / 100 for i in range(12)]
    assert verifier.stats == {"requests": 12, "unparseable": 0, "failures": 0}
    assert fake.count == 12


def test_gemini_client_generate(fake: FakeGemini) -> None:
    fake.push(ok("0.7", tokens=(20, 3)), thinking("0.4"))
    client = GeminiClient("client-test", **FAST)
    assert client.generate("prompt", tone(0.2), RATE) == ("0.7", 23)
    assert client.generate("prompt", tone(0.2), RATE, temperature=0.5, seed=11)[0] == "0.4"
    assert fake.requests[1].body["generationConfig"] == {"temperature": 0.5, "candidateCount": 1, "seed": 11}
    assert client.stats == {"requests": 2, "retries": 0, "failures": 0, "tokens": 23}


def test_make_verifier_errors() -> None:
    with pytest.raises(ValueError, match="unknown verifier backend"):
        make_verifier("openai", "gpt-4o")
    with pytest.raises(ValueError, match="model name"):
        make_verifier("gemini")
