"""The on-disk encoder cache: same outputs, reuse, invalidation, augmented bypass, atomic writes."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest
import torch
from qwen2_fixtures import RATE, tiny_qwen2_audio, tone

from ser_lightning.alm import qwen2_audio_inputs
from ser_lightning.nn.qwen2_audio import apply_lora, qwen2_audio_hidden_states
from ser_lightning.nn.qwen2_audio.cache import EncoderCache, encoder_fingerprint, feature_settings
from ser_lightning.nn.qwen2_audio.forward import encode_audio

CLASSES = ("Anger", "Happiness", "Neutral", "Sadness")
IDS = ["Ses01F_a/001", "utt-2", "ütt 3"]


@pytest.fixture(scope="module")
def tiny():
    model, processor = tiny_qwen2_audio()
    return model.requires_grad_(False), processor


@pytest.fixture(scope="module")
def batch(tiny):
    _, processor = tiny
    audios = [tone(1.0, 220.0), tone(2.2, 330.0), tone(0.6, 500.0)]
    return qwen2_audio_inputs(processor, audios, ["hi", None, "leave me alone"], ["a", "b", "c"], CLASSES, RATE)


def _cache(tiny, root: Path) -> EncoderCache:
    model, processor = tiny
    settings = feature_settings(processor.feature_extractor)
    return EncoderCache(root, encoder_fingerprint(model.model.audio_tower, settings))


def _encode(tiny, batch, cache, augmented=None):
    tower = tiny[0].model.audio_tower
    return cache.encode(tower, batch["input_features"], batch["feature_attention_mask"], ids=IDS, augmented=augmented)


def _entries(root: Path) -> list[Path]:
    return sorted(root.rglob("*.safetensors"))


def test_cached_outputs_equal_uncached_and_are_reused(tiny, batch, tmp_path: Path) -> None:
    model, _ = tiny
    cache = _cache(tiny, tmp_path)
    reference = encode_audio(model.model.audio_tower, batch["input_features"], batch["feature_attention_mask"])
    first = _encode(tiny, batch, cache)
    assert len(_entries(tmp_path)) == 3
    second = _encode(tiny, batch, cache)
    for ref, a, b in zip(reference, first, second, strict=True):
        assert torch.equal(a, ref)
        assert torch.equal(b, ref)
    cache.save(IDS[1], torch.full_like(reference[1], 7.0))  # a planted entry is what the next call returns
    assert torch.equal(_encode(tiny, batch, cache)[1], torch.full_like(reference[1], 7.0))
    ids = IDS
    with torch.no_grad():
        plain = qwen2_audio_hidden_states(model, batch["input_ids"], batch["attention_mask"], batch["input_features"],
                                          batch["feature_attention_mask"])
        cache.save(IDS[1], reference[1])
        cached = qwen2_audio_hidden_states(model, batch["input_ids"], batch["attention_mask"], batch["input_features"],
                                           batch["feature_attention_mask"], ids=ids, cache=cache)
    assert torch.equal(cached, plain)


def test_augmented_samples_bypass_the_cache(tiny, batch, tmp_path: Path) -> None:
    model, _ = tiny
    cache = _cache(tiny, tmp_path)
    reference = encode_audio(model.model.audio_tower, batch["input_features"], batch["feature_attention_mask"])
    cache.save(IDS[0], torch.zeros_like(reference[0]))  # a stale entry under the mixed sample's id
    out = _encode(tiny, batch, cache, augmented=torch.tensor([True, False, True]))
    assert torch.equal(out[0], reference[0])  # computed, not read
    assert cache.load(IDS[0]).abs().sum() == 0  # and not written
    assert cache.load(IDS[2]) is None
    assert cache.load(IDS[1]) is not None


def test_fingerprint_changes_with_weights_and_settings(tiny, tmp_path: Path) -> None:
    model, processor = tiny
    settings = feature_settings(processor.feature_extractor)
    assert settings["feature_size"] == 128
    assert settings["sampling_rate"] == RATE
    tower = model.model.audio_tower
    base = encoder_fingerprint(tower, settings)
    assert encoder_fingerprint(tower, settings) == base
    assert encoder_fingerprint(tower, {**settings, "hop_length": 320}) != base
    changed, _ = tiny_qwen2_audio()
    with torch.no_grad():
        changed.model.audio_tower.layers[1].fc2.bias[0] += 1e-3
    assert encoder_fingerprint(changed.model.audio_tower, settings) != base
    assert encoder_fingerprint(copy.deepcopy(tower).to(torch.bfloat16), settings) != base


def test_a_new_fingerprint_recomputes(tiny, batch, tmp_path: Path) -> None:
    cache = _cache(tiny, tmp_path)
    _encode(tiny, batch, cache)
    cache.save(IDS[0], torch.zeros(25, 16))
    other = EncoderCache(tmp_path, "0" * 32)
    out = _encode(tiny, batch, other)
    assert out[0].abs().sum() > 0  # the old fingerprint's planted zeros are not seen
    assert len(_entries(tmp_path)) == 6


def test_wrong_length_entry_is_a_miss(tiny, batch, tmp_path: Path) -> None:
    cache = _cache(tiny, tmp_path)
    cache.save(IDS[2], torch.zeros(5, 16))  # 0.6 s gives 15 tokens, not 5
    assert _encode(tiny, batch, cache)[2].shape == (15, 16)
    assert cache.load(IDS[2], 15) is not None


def test_cache_is_refused_with_lora_on_the_encoder(batch, tmp_path: Path) -> None:
    model, _ = tiny_qwen2_audio()
    peft_model = apply_lora(model, include_audio_encoder=True)
    with pytest.raises(ValueError, match="frozen audio encoder"):
        qwen2_audio_hidden_states(peft_model, batch["input_ids"], batch["attention_mask"], batch["input_features"],
                                  batch["feature_attention_mask"], ids=IDS, cache=EncoderCache(tmp_path, "f"))


def test_concurrent_writers_never_expose_a_partial_file(tmp_path: Path) -> None:
    cache = EncoderCache(tmp_path, "f")
    values = [torch.full((300, 64), float(v)) for v in range(4)]
    seen: list[torch.Tensor | None] = []
    stop = threading.Event()

    def write(v: torch.Tensor) -> None:
        for _ in range(25):
            cache.save("same-utterance", v)

    def read() -> None:
        while not stop.is_set():
            seen.append(cache.load("same-utterance"))

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(v,)) for v in values]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    whole = [s for s in seen if s is not None]
    assert all(any(torch.equal(s, v) for v in values) for s in whole)
    assert not list(tmp_path.rglob("*.tmp"))  # temporary files were all moved or removed
    assert len(_entries(tmp_path)) == 1


def test_bad_fingerprint_and_ids_are_refused(tiny, batch, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="plain non-empty"):
        EncoderCache(tmp_path, "../x")
    with pytest.raises(ValueError, match="2 ids for a batch of 3"):
        EncoderCache(tmp_path, "f").encode(tiny[0].model.audio_tower, batch["input_features"],
                                           batch["feature_attention_mask"], ids=IDS[:2])
