"""Dynamic batching bounds, padding, the batch-size estimate and collate."""

import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import entropy as scipy_entropy

from ser_lightning.data.stream.batching import (
    Collate,
    dynamic_batches,
    expected_batch_size,
    plan_batches,
)

RATE = 100  # samples per second: keeps the arrays small


def _samples(lengths, start=0):
    return [{"id": f"u{start + i}", "audio": np.ones(n, dtype=np.float32)} for i, n in enumerate(lengths)]


def _check_bounds(batches, max_frames, max_size):
    for batch in batches:
        lengths = [len(s["audio"]) for s in batch] if isinstance(batch[0], dict) else batch
        assert len(lengths) <= max_size
        assert len(lengths) == 1 or len(lengths) * max(lengths) <= max_frames


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 900), min_size=1, max_size=80),
    max_frames=st.integers(50, 3000),
    max_size=st.integers(1, 16),
)
def test_plan_batches_respects_both_bounds_and_uses_every_item_once(lengths, max_frames, max_size):
    plan = plan_batches(lengths, max_frames, max_size)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    _check_bounds([[lengths[i] for i in b] for b in plan], max_frames, max_size)
    for b, nxt in zip(plan, plan[1:], strict=False):  # greedy: a batch is closed only when the next item does not fit
        longest_next = max(lengths[i] for i in nxt[:1])
        assert len(b) == max_size or (len(b) + 1) * longest_next > max_frames


def test_plan_batches_rejects_empty_bounds():
    with pytest.raises(ValueError, match=">= 1"):
        plan_batches([3], 0, 4)


@pytest.mark.parametrize("use_rng", [False, True])
def test_dynamic_batches_bound_every_batch_and_keep_padding_small(use_rng):
    rng = np.random.default_rng(0)
    lengths = rng.integers(1 * RATE, 10 * RATE, size=2000).tolist()  # 1-10 s clips
    batches = list(
        dynamic_batches(
            _samples(lengths),
            RATE,
            max_batch_seconds=40.0,
            max_batch_size=16,
            bucket_buffer=256,
            rng=random.Random(0) if use_rng else None,
        )
    )
    assert sorted(s["id"] for b in batches for s in b) == sorted(f"u{i}" for i in range(2000))
    _check_bounds(batches, 40 * RATE, 16)
    padded = sum(len(b) * max(len(s["audio"]) for s in b) for b in batches)
    assert 1 - sum(lengths) / padded < 0.05  # bucketing keeps padding under 5 %
    fractions = [1 - sum(len(s["audio"]) for s in b) / (len(b) * max(len(s["audio"]) for s in b)) for b in batches]
    mean_fraction = np.mean(fractions)  # the padding share of each batch
    assert mean_fraction < 0.05
    # the batch-size estimate used for batches per epoch is close to what batching achieves
    estimate = expected_batch_size([n / RATE for n in lengths], 40.0, 16)
    assert len(lengths) / len(batches) == pytest.approx(estimate, rel=0.1)


def test_dynamic_batches_without_bucketing_pads_more():
    lengths = np.random.default_rng(1).integers(RATE, 10 * RATE, size=500).tolist()

    def waste(buffer):
        batches = list(dynamic_batches(_samples(lengths), RATE, 40.0, 16, bucket_buffer=buffer))
        return 1 - sum(lengths) / sum(len(b) * max(len(s["audio"]) for s in b) for b in batches)

    assert waste(256) < waste(1) / 4


def test_dynamic_batches_eval_order_is_deterministic_and_train_order_is_shuffled():
    lengths = list(range(10, 410, 4)) * 2

    def ids(rng):
        return [[s["id"] for s in b] for b in dynamic_batches(_samples(lengths), RATE, 2.0, 8, 32, rng)]

    assert ids(None) == ids(None)
    assert ids(random.Random(1)) == ids(random.Random(1))
    assert ids(random.Random(1)) != ids(None)


def test_dynamic_batches_emit_a_long_clip_even_when_the_stream_never_ends():
    def stream():
        yield {"id": "long", "audio": np.ones(9 * RATE, dtype=np.float32)}
        i = 0
        while True:
            yield {"id": f"s{i}", "audio": np.ones(RATE, dtype=np.float32)}
            i += 1

    batches = dynamic_batches(stream(), RATE, max_batch_seconds=30.0, max_batch_size=32, bucket_buffer=16)
    seen = [s["id"] for _, b in zip(range(20), batches, strict=False) for s in b]
    assert "long" in seen


def test_dynamic_batches_oversized_clip_gets_its_own_batch(caplog):
    batches = list(dynamic_batches(_samples([50 * RATE, RATE, RATE]), RATE, 10.0, 8, 4))
    assert [len(b) for b in batches] == [2, 1]
    assert "longer than max_batch_seconds" in caplog.text


def test_expected_batch_size_is_the_harmonic_mean_of_per_clip_batch_sizes():
    assert expected_batch_size([4.0] * 10, 64.0, 32) == pytest.approx(16.0)
    assert expected_batch_size([1.0] * 10, 64.0, 32) == pytest.approx(32.0)  # capped by max_batch_size
    assert expected_batch_size([30.0, 2.0], 64.0, 32) == pytest.approx(2 / (1 / 2 + 1 / 32))
    assert expected_batch_size([30.0], 64.0, 32, crop_seconds=8.0) == pytest.approx(8.0)
    assert expected_batch_size([100.0], 64.0, 32) == pytest.approx(1.0)
    assert expected_batch_size([], 64.0, 32) == 32.0


# ------------------------------------------------------------------ collate


def _decoded(n, uid, votes, vad=None, transcript="hi"):
    dist = np.asarray(votes, dtype=np.float32) / sum(votes)
    stored = float(scipy_entropy(np.asarray(votes, dtype=np.float64)))  # the shard JSON's float64 entropy (nats)
    meta = {"id": uid, "votes": {"primary": votes}, "entropy": {"primary": stored}, "vad": vad}
    meta["transcript"] = transcript
    return {"id": uid, "audio": np.full(n, 0.5, dtype=np.float32), "sample_rate": 16000, "meta": meta, "target": dist}


def test_collate_pads_masks_and_stacks_targets():
    samples = [
        _decoded(5, "a", [1, 0, 2, 1], vad=[3.0, 2.0, 4.0]),
        _decoded(3, "b", [0, 0, 5, 0]),
        _decoded(7, "c", [2, 2, 2, 2], transcript=None),
    ]
    batch = Collate("primary")(samples)
    assert batch["audio"].shape == (3, 7)
    assert batch["audio"].dtype == torch.float32
    assert batch["audio_mask"].dtype == torch.long
    assert batch["audio_mask"].sum(1).tolist() == [5, 3, 7]
    assert torch.all(batch["audio"][batch["audio_mask"] == 0] == 0)
    assert torch.all(batch["audio"][batch["audio_mask"] == 1] == 0.5)
    torch.testing.assert_close(batch["targets"], torch.tensor(np.stack([s["target"] for s in samples])))
    torch.testing.assert_close(batch["targets"].sum(1), torch.ones(3))
    assert batch["votes"].tolist() == [[1, 0, 2, 1], [0, 0, 5, 0], [2, 2, 2, 2]]
    assert batch["entropy"].dtype == torch.float64
    assert batch["entropy"].tolist() == [s["meta"]["entropy"]["primary"] for s in samples]  # exact, not recomputed
    assert batch["entropy"][0] == pytest.approx(1.5 * math.log(2), abs=1e-15)  # [1/4, 0, 1/2, 1/4]
    assert batch["entropy"][1] == 0
    assert batch["entropy"][2] == pytest.approx(math.log(4), abs=1e-15)
    assert batch["vad"].shape == (3, 3)
    assert batch["vad"][0].tolist() == [3.0, 2.0, 4.0]
    assert torch.isnan(batch["vad"][1:]).all()
    assert batch["ids"] == ["a", "b", "c"]
    assert batch["transcripts"] == ["hi", "hi", ""]
    assert "text_input_ids" not in batch


def test_collate_passes_the_stored_entropy_of_the_label_source_and_requires_it():
    sample = _decoded(4, "a", [1, 1, 0, 0])
    sample["meta"]["entropy"] = {"primary": 0.1234567890123456789, "merged": 0.5}  # not the target's entropy
    assert Collate("primary")([sample])["entropy"].tolist() == [0.1234567890123456789]
    assert Collate("merged")([sample])["entropy"].tolist() == [0.5]
    del sample["meta"]["entropy"]
    with pytest.raises(ValueError, match="no entropy for label source 'primary'"):
        Collate("primary")([sample])


def test_collate_prefers_sample_votes_and_marks_missing_votes_nan():
    mixed = _decoded(4, "m", [1, 1, 0, 0])
    mixed["votes"] = np.array([0.5, 1.5, 1.0, 1.0])  # e.g. set by an augmentation
    no_votes = _decoded(4, "n", [1, 1, 0, 0])
    no_votes["meta"].pop("votes")
    batch = Collate("primary")([mixed, no_votes])
    assert batch["votes"][0].tolist() == [0.5, 1.5, 1.0, 1.0]
    assert torch.isnan(batch["votes"][1]).all()


def test_collate_tokenizes_transcripts_when_given_a_tokenizer():
    calls = {}

    def tokenizer(texts, **kw):
        calls.update(kw, texts=texts)
        ids = torch.tensor([[1, 2, 0], [3, 0, 0]])
        return {"input_ids": ids, "attention_mask": (ids > 0).long()}

    batch = Collate("primary", tokenizer, max_text_length=3)([_decoded(2, "a", [1, 1]), _decoded(2, "b", [1, 1])])
    assert calls["texts"] == ["hi", "hi"]
    assert calls["max_length"] == 3
    assert calls["truncation"]
    assert calls["padding"]
    assert batch["text_input_ids"].dtype == torch.long
    assert batch["text_attention_mask"].tolist() == [[1, 1, 0], [1, 0, 0]]


def test_collate_rejects_an_empty_list():
    with pytest.raises(ValueError, match="empty"):
        Collate()([])
