"""Decoding, transforms and the train/eval streams over tiny shards; SERDataModule in one process."""

import io
import json
import random
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from shard_fixtures import RATE, tone

from ser_lightning.data.shards.card import read_durations
from ser_lightning.data.stream.datamodule import EpochDataLoader
from ser_lightning.data.stream.pipeline import EvalStream, StreamConfig, TrainStream, shard_cycle
from ser_lightning.data.stream.sample import crop, decode_sample, resample
from ser_lightning.data.stream.skips import SampleDecodeError, SkipCounter

CLASSES = ["Anger", "Happiness", "Neutral", "Sadness"]  # as in shard_fixtures.write_test_shards


def flac_bytes(audio, rate=RATE):
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _raw(audio_bytes, meta=None, key="a_1"):
    meta = meta or {
        "id": "a.1",
        "distribution": {"primary": [1, 1, 0, 2]},
        "votes": {"primary": [1, 1, 0, 2]},
        "entropy": {"primary": 1.0397},
    }
    return {"__key__": key, "__url__": "x.tar", "flac": audio_bytes, "json": json.dumps(meta).encode()}


def _config(sample_rate=RATE, crop_seconds=None, max_batch_seconds=4.0, max_batch_size=4, eval_split="auto"):
    return StreamConfig(
        num_classes=len(CLASSES),
        sample_rate=sample_rate,
        crop_seconds=crop_seconds,
        max_batch_seconds=max_batch_seconds,
        max_batch_size=max_batch_size,
        bucket_buffer=8,
        eval_split=eval_split,
    )


def _paths(shard_dir, split):
    card = json.loads((shard_dir / "card.json").read_text())
    return [str(shard_dir / name) for name in card["shards"][split]]


# ------------------------------------------------------------------ decode


def test_decode_sample_reads_flac_json_and_target():
    clip = tone(0.5)
    sample = decode_sample(_raw(flac_bytes(clip)), "primary", num_classes=4)
    assert sample["id"] == "a.1"
    assert sample["sample_rate"] == RATE
    assert sample["audio"].dtype == np.float32
    assert sample["audio"].shape == clip.shape
    np.testing.assert_allclose(sample["audio"], clip, atol=1e-4)  # PCM_16 quantisation
    np.testing.assert_allclose(sample["target"], [0.25, 0.25, 0.0, 0.5])
    assert sample["target"].dtype == np.float32
    assert sample["meta"]["votes"]["primary"] == [1, 1, 0, 2]


def test_decode_sample_downmixes_stereo():
    stereo = np.stack([tone(0.2), np.zeros_like(tone(0.2))], axis=1)
    sample = decode_sample(_raw(flac_bytes(stereo)))
    assert sample["audio"].ndim == 1
    np.testing.assert_allclose(sample["audio"], tone(0.2) / 2, atol=1e-4)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (_raw(b"garbage bytes" * 10), "LibsndfileError|Error"),
        (_raw(flac_bytes(tone(0.1)), {"id": "x", "distribution": {}}), r"'a_1' of x.tar: JSON has no distribution"),
        (_raw(flac_bytes(tone(0.1)), {"id": "x", "distribution": {"primary": [1, 0, 0, 0]}}), "no entropy"),
        (_raw(flac_bytes(tone(0.1)), {"id": "x", "distribution": {"primary": [0, 0, 0, 0]}}), "not a distribution"),
        (_raw(flac_bytes(tone(0.1)), {"id": "x", "distribution": {"primary": [1, 2]}}), "shape"),
        ({"__key__": "k", "json": b"{}"}, "flac"),
    ],
)
def test_decode_sample_rejects_bad_samples(raw, match):
    with pytest.raises(SampleDecodeError, match=match):
        decode_sample(raw, "primary", num_classes=4)


def test_skip_counter_counts_and_stops_an_endless_failure():
    skips = SkipCounter(max_consecutive=3)
    assert skips(ValueError("a")) is True
    skips.ok()
    assert skips(ValueError("b")) is True
    assert skips(ValueError("c")) is True
    with pytest.raises(RuntimeError, match="3 bad samples"):
        skips(ValueError("d"))
    assert skips.count == 4


# ------------------------------------------------------------------ transforms


def test_resample_changes_length_and_keeps_pitch():
    clip = tone(1.0, freq=440.0)
    out = resample(clip, RATE, 8000)
    assert out.dtype == np.float32
    assert len(out) == 8000
    peak_hz = np.argmax(np.abs(np.fft.rfft(out))) * 8000 / len(out)
    assert peak_hz == pytest.approx(440.0, abs=2.0)
    assert resample(clip, RATE, RATE) is clip


def test_crop_random_is_a_window_and_center_is_centered():
    clip = np.arange(100, dtype=np.float32)
    starts = set()
    for seed in range(20):
        out = crop(clip, 30, random.Random(seed))
        assert len(out) == 30
        np.testing.assert_array_equal(out, np.arange(out[0], out[0] + 30))
        starts.add(int(out[0]))
    assert len(starts) > 5
    np.testing.assert_array_equal(crop(clip, 30), np.arange(35, 65))
    assert crop(clip, 200) is clip
    assert crop(clip, None) is clip


def test_shard_cycle_slots_start_on_different_shards_and_cycle():
    urls = [f"s{i}" for i in range(4)]
    firsts = [next(shard_cycle(urls, 0, 0, slot, 4))["url"] for slot in range(4)]
    assert sorted(firsts) == urls
    stream = shard_cycle(urls, 0, 0, 1, 4)
    seen = [next(stream)["url"] for _ in range(12)]
    assert Counter(seen) == {u: 3 for u in urls}


def test_read_durations_peeks_json_only(shard_dir):
    durations = read_durations(_paths(shard_dir, "train")[0])
    assert len(durations) == 11
    assert all(0.2 <= d <= 1.5 for d in durations)


# ------------------------------------------------------------------ streams


def test_eval_stream_yields_each_sample_once_resampled_and_center_cropped(shard_dir):
    stream = EvalStream(_paths(shard_dir, "test"), _config(sample_rate=8000, crop_seconds=0.5))
    batches = list(stream)
    ids = [i for b in batches for i in b["ids"]]
    assert sorted(ids) == [f"test.{n:04d}" for n in range(10)]
    for batch in batches:
        assert batch["audio"].shape[1] <= 4000  # 0.5 s at 8 kHz
        assert batch["audio"].shape[0] * batch["audio"].shape[1] <= 4.0 * 8000
        assert batch["targets"].shape == (len(batch["ids"]), 4)


@pytest.mark.parametrize("world_size", [2, 3, 5, 16])
def test_eval_stream_splits_by_sample_over_ranks(shard_dir, world_size):
    ids = []
    for rank in range(world_size):
        stream = EvalStream(_paths(shard_dir, "val"), _config(), rank=rank, world_size=world_size)
        ids += [i for b in stream for i in b["ids"]]
    assert sorted(ids) == [f"val.{n:04d}" for n in range(13)]


def test_eval_stream_gives_every_rank_data_before_filling_workers(shard_dir, monkeypatch):
    """13 val samples on 13 ranks x 4 workers: samples go to ranks first, so no rank is left empty."""
    per_rank = []
    for rank in range(13):
        ids = []
        for worker in range(4):  # webdataset's worker info reads WORKER / NUM_WORKERS before torch's
            monkeypatch.setenv("WORKER", str(worker))
            monkeypatch.setenv("NUM_WORKERS", "4")
            stream = EvalStream(_paths(shard_dir, "val"), _config(), rank=rank, world_size=13)
            ids += [i for b in stream for i in b["ids"]]
        per_rank.append(ids)
    assert [len(ids) for ids in per_rank] == [1] * 13
    assert sorted(i for ids in per_rank for i in ids) == [f"val.{n:04d}" for n in range(13)]


def test_eval_stream_skips_and_counts_undecodable_samples(make_shards, caplog):
    shards = make_shards({"val": [6]}, corrupt=["val.0002"])
    ids = [i for b in EvalStream(_paths(shards, "val"), _config()) for i in b["ids"]]
    assert sorted(ids) == ["val.0000", "val.0001", "val.0003", "val.0004", "val.0005"]
    assert "val.0002" in caplog.text.replace("_", ".")
    assert "skipped 1 bad" in caplog.text


def test_eval_batches_carry_each_skip_once_and_a_worker_left_with_skips_still_delivers_them(make_shards):
    shards = make_shards({"val": [3, 1]}, corrupt=["val.0001", "val.0003"])
    paths = _paths(shards, "val")
    # two ranks split by sample: rank 1 gets val.0001 and val.0003 only, both undecodable: one batch of no samples
    by_rank = [list(EvalStream(paths, _config(eval_split="sample"), rank=r, world_size=2)) for r in (0, 1)]
    assert [i for b in by_rank[0] for i in b["ids"]] == ["val.0000", "val.0002"]
    assert [b["skipped"] for b in by_rank[0]] == [[]]
    (only,) = by_rank[1]
    assert only["ids"] == []
    assert "targets" not in only
    assert [(r["key"], Path(r["shard"]).name) for r in only["skipped"]] == [
        ("val_0001", "val-000000.tar"),
        ("val_0003", "val-000001.tar"),
    ]
    assert all(r["reason"] for r in only["skipped"])


@pytest.mark.parametrize("world", [1, 2, 3])
def test_eval_by_shard_and_by_sample_score_the_same_samples_once_and_by_shard_reads_each_shard_once(make_shards, world):
    shards = make_shards({"val": [3, 2, 4, 1]})
    paths = _paths(shards, "val")
    sizes = sum(Path(p).stat().st_size for p in paths)
    seen = {}
    for mode in ("shard", "sample"):
        runs = [list(EvalStream(paths, _config(eval_split=mode), rank=r, world_size=world)) for r in range(world)]
        ids = [i for batches in runs for b in batches for i in b["ids"]]
        assert len(ids) == len(set(ids)) == 10  # every sample exactly once over the ranks
        seen[mode] = (sorted(ids), sum(b["read_bytes"] for batches in runs for b in batches))
        stream = EvalStream(paths, _config(eval_split="auto"), world_size=world)
        assert stream.by_shard(world) == (len(paths) >= world)
    assert seen["shard"][0] == seen["sample"][0]
    assert seen["shard"][1] == sizes  # by shard: each shard's bytes once in all
    assert seen["sample"][1] == world * sizes  # by sample: every rank reads every shard


def test_a_bad_eval_split_is_refused():
    with pytest.raises(ValueError, match="eval_split"):
        _config(eval_split="rows")


def test_eval_stream_names_the_shard_of_a_tar_cut_inside_a_member(make_shards):
    shards = make_shards({"val": [4]})
    (path,) = _paths(shards, "val")
    with tarfile.open(path) as tar:
        third_flac = tar.getmembers()[4]
    with open(path, "r+b") as f:
        f.truncate(third_flac.offset_data + 10)
    batches = list(EvalStream([path], _config()))
    assert sorted(i for b in batches for i in b["ids"]) == ["val.0000", "val.0001"]
    records = [r for b in batches for r in b["skipped"]]
    assert records
    assert {r["shard"] for r in records} == {path}
    assert any(r["key"] is None and "ReadError" in r["reason"] for r in records)


def test_train_stream_yields_exact_batch_count_fresh_and_reproducible_per_epoch(shard_dir):
    def run(epoch, seed=0):
        stream = TrainStream(_paths(shard_dir, "train"), 7, _config(crop_seconds=0.6), shuffle_buffer=10, seed=seed)
        stream.set_epoch(epoch)
        return [b["ids"] for b in stream]

    first = run(0)
    assert len(first) == 7
    assert run(0) == first
    assert run(1) != first
    assert run(0, seed=1) != first
    crop_len = round(0.6 * RATE)
    stream = TrainStream(_paths(shard_dir, "train"), 3, _config(crop_seconds=0.6))
    assert all(b["audio"].shape[1] <= crop_len for b in stream)
    assert len(stream) == 3


def test_train_stream_worker_counts_sum_to_the_rank_count(shard_dir):
    stream = TrainStream(_paths(shard_dir, "train"), 7, _config())
    assert [stream.worker_batches(w, 3) for w in range(3)] == [3, 2, 2]
    assert sum(stream.worker_batches(w, 10) for w in range(10)) == 7


class _Silence:
    """An augment stage (AugmentStage) that records what it sees and silences every clip."""

    label_source = "primary"
    total = 0

    def __init__(self) -> None:
        self.seen: list = []
        self.epoch, self.distributed = None, None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_distributed(self, rank: int, world_size: int) -> None:
        self.distributed = (rank, world_size)

    def __call__(self, src):
        for sample in src:
            self.seen.append((sample["sample_rate"], len(sample["audio"]), sample["audio"].dtype, set(sample)))
            yield {**sample, "audio": sample["audio"] * 0}


def test_train_stream_runs_augment_on_decoded_samples_before_resampling(shard_dir):
    augment = _Silence()
    config = _config(sample_rate=8000)
    stream = TrainStream(_paths(shard_dir, "train"), 2, config, rank=1, world_size=3, augment=augment)
    assert augment.distributed == (1, 3)
    stream.set_epoch(4)
    assert augment.epoch == 4
    batches = list(stream)
    seen = augment.seen
    assert seen
    assert all(rate == RATE and dtype == np.float32 for rate, _, dtype, _ in seen)
    assert all(keys >= {"id", "audio", "sample_rate", "meta", "target"} for *_, keys in seen)
    assert all(float(b["audio"].abs().max()) == 0.0 for b in batches)


def test_train_stream_over_dataloader_workers_keeps_the_count(shard_dir):
    stream = TrainStream(_paths(shard_dir, "train"), 5, _config(), shuffle_buffer=4)
    loader = EpochDataLoader(stream, batch_size=None, num_workers=2)
    assert len(loader) == 5
    first = [b["ids"] for b in loader]
    second = [b["ids"] for b in loader]  # no trainer: the pass count is the epoch
    assert len(first) == len(second) == 5
    assert first != second
    assert stream.epoch == 1
