"""The on-disk encoder cache: same outputs, reuse, invalidation (weights, settings, audio), bypass, atomic writes."""

from __future__ import annotations

import copy
import hashlib
import threading
from pathlib import Path

import pytest
import torch
from qwen2_fixtures import RATE, tiny_qwen2_audio, tone
from safetensors.torch import save_file

from ser_lightning.alm import qwen2_audio_inputs
from ser_lightning.nn.qwen2_audio import apply_lora, qwen2_audio_hidden_states
from ser_lightning.nn.qwen2_audio.cache import EncoderCache, audio_digest, encoder_fingerprint, feature_settings
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


def _digest(batch, i: int) -> str:
    """The audio digest the cache keys row ``i`` of ``batch`` by."""
    return audio_digest(batch["input_features"][i], int(batch["feature_attention_mask"][i].sum()))


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
    cache.save(IDS[1], _digest(batch, 1), torch.full_like(reference[1], 7.0))  # a planted entry is read
    assert torch.equal(_encode(tiny, batch, cache)[1], torch.full_like(reference[1], 7.0))
    ids = IDS
    with torch.no_grad():
        plain = qwen2_audio_hidden_states(
            model, batch["input_ids"], batch["attention_mask"], batch["input_features"], batch["feature_attention_mask"]
        )
        cache.save(IDS[1], _digest(batch, 1), reference[1])
        cached = qwen2_audio_hidden_states(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            batch["input_features"],
            batch["feature_attention_mask"],
            ids=ids,
            cache=cache,
        )
    assert torch.equal(cached, plain)


def _rows_encoded(tower) -> tuple[list[int], object]:
    """A hook on the encoder's first conv recording how many rows each encoder run had (hits run nothing)."""
    rows: list[int] = []
    return rows, tower.conv1.register_forward_hook(lambda _m, args, _out: rows.append(int(args[0].shape[0])))


def test_new_audio_under_the_same_ids_is_encoded_not_read(tiny, tmp_path: Path) -> None:
    model, processor = tiny
    tower = model.model.audio_tower
    cache = _cache(tiny, tmp_path)
    ids = ["X", "Y"]

    def inputs(freqs):  # the same lengths (token counts) for A and B: only the audio differs
        return qwen2_audio_inputs(processor, [tone(1.0, f) for f in freqs], ["hi", None], ["a", "b"], CLASSES, RATE)

    a, b = inputs([220.0, 330.0]), inputs([440.0, 550.0])
    ref_a = encode_audio(tower, a["input_features"], a["feature_attention_mask"])
    ref_b = encode_audio(tower, b["input_features"], b["feature_attention_mask"])
    assert not torch.allclose(ref_a[0], ref_b[0])
    rows, hook = _rows_encoded(tower)
    try:
        for name, batch, reference, encoded in (("A", a, ref_a, [2]), ("B", b, ref_b, [2]), ("A", a, ref_a, []),
                                                ("B", b, ref_b, [])):  # fmt: skip
            rows.clear()
            out = cache.encode(tower, batch["input_features"], batch["feature_attention_mask"], ids=ids)
            assert rows == encoded, name  # B is a miss although X and Y are cached; then both hit
            for got, want in zip(out, reference, strict=True):
                assert torch.equal(got, want), name
    finally:
        hook.remove()
    assert len(_entries(tmp_path)) == 4  # A's and B's entries side by side (two corpora sharing ids)


def test_entries_of_the_old_scheme_or_other_audio_are_misses(tiny, batch, tmp_path: Path) -> None:
    model, _ = tiny
    cache = _cache(tiny, tmp_path)
    reference = encode_audio(model.model.audio_tower, batch["input_features"], batch["feature_attention_mask"])
    key = hashlib.sha256(IDS[0].encode()).hexdigest()
    old = cache.root / key[:2] / f"{key}.safetensors"  # where the id-only scheme wrote IDS[0]'s entry
    old.parent.mkdir(parents=True)
    save_file({"features": torch.zeros_like(reference[0])}, old, metadata={"id": IDS[0]})
    forged = cache.path(IDS[1], _digest(batch, 1))  # the right name, but recorded for other audio
    forged.parent.mkdir(parents=True, exist_ok=True)
    save_file({"features": torch.zeros_like(reference[1])}, forged, metadata={"id": IDS[1], "audio": "0" * 32})
    assert cache.load(IDS[1], _digest(batch, 1)) is None
    out = _encode(tiny, batch, cache)
    for got, want in zip(out, reference, strict=True):
        assert torch.equal(got, want)
    assert cache.load(IDS[0], _digest(batch, 0)) is not None  # recomputed and written under the new scheme
    with pytest.raises(ValueError, match="hex digest"):
        cache.path(IDS[0], "../x")


def test_augmented_samples_bypass_the_cache(tiny, batch, tmp_path: Path) -> None:
    model, _ = tiny
    cache = _cache(tiny, tmp_path)
    reference = encode_audio(model.model.audio_tower, batch["input_features"], batch["feature_attention_mask"])
    cache.save(IDS[0], _digest(batch, 0), torch.zeros_like(reference[0]))  # a stale entry under the mixed id
    out = _encode(tiny, batch, cache, augmented=torch.tensor([True, False, True]))
    assert torch.equal(out[0], reference[0])  # computed, not read
    assert cache.load(IDS[0], _digest(batch, 0)).abs().sum() == 0  # and not written
    assert cache.load(IDS[2], _digest(batch, 2)) is None
    assert cache.load(IDS[1], _digest(batch, 1)) is not None


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
    cache.save(IDS[0], _digest(batch, 0), torch.zeros(25, 16))
    other = EncoderCache(tmp_path, "0" * 32)
    out = _encode(tiny, batch, other)
    assert out[0].abs().sum() > 0  # the old fingerprint's planted zeros are not seen
    assert len(_entries(tmp_path)) == 6


def test_wrong_length_entry_is_a_miss(tiny, batch, tmp_path: Path) -> None:
    cache = _cache(tiny, tmp_path)
    cache.save(IDS[2], _digest(batch, 2), torch.zeros(5, 16))  # 0.6 s gives 15 tokens, not 5
    assert _encode(tiny, batch, cache)[2].shape == (15, 16)
    assert cache.load(IDS[2], _digest(batch, 2), 15) is not None


def test_cache_is_refused_with_lora_on_the_encoder(batch, tmp_path: Path) -> None:
    model, _ = tiny_qwen2_audio()
    peft_model = apply_lora(model, include_audio_encoder=True)
    with pytest.raises(ValueError, match="frozen audio encoder"):
        qwen2_audio_hidden_states(
            peft_model,
            batch["input_ids"],
            batch["attention_mask"],
            batch["input_features"],
            batch["feature_attention_mask"],
            ids=IDS,
            cache=EncoderCache(tmp_path, "f"),
        )


def test_concurrent_writers_never_expose_a_partial_file(tmp_path: Path) -> None:
    cache = EncoderCache(tmp_path, "f")
    values = [torch.full((300, 64), float(v)) for v in range(4)]
    seen: list[torch.Tensor | None] = []
    stop = threading.Event()

    def write(v: torch.Tensor) -> None:
        for _ in range(25):
            cache.save("same-utterance", "ab12", v)

    def read() -> None:
        while not stop.is_set():
            seen.append(cache.load("same-utterance", "ab12"))

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
        EncoderCache(tmp_path, "f").encode(
            tiny[0].model.audio_tower, batch["input_features"], batch["feature_attention_mask"], ids=IDS[:2]
        )
