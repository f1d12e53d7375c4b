"""Shard writer: round trip, rejections, determinism, workers, card and out-dir safety."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from ser_lightning.corpora.record import ReadReport, UtteranceRecord
from ser_lightning.data.audio_io import encode_flac, load_audio
from ser_lightning.data.shards.card import (
    iter_shard_meta,
    read_card,
    rejection_summary,
    shard_dir_statistics,
    shard_paths,
)
from ser_lightning.data.shards.writer import refresh_card, write_shards
from ser_lightning.labels import entropy
from ser_lightning.stats import STATS_KEYS, vote_statistics

CLASSES = ("Anger", "Happiness", "Neutral", "Sadness")
META_KEYS = {
    "id",
    "corpus",
    "split",
    "transcript",
    "speaker",
    "session",  # IEMOCAP's session or null
    "duration",
    "classes",
    "votes",
    "distribution",
    "entropy",
    "vad",
    "vad_scale",
    "consensus",  # the corpus's consensus label or null
}


def sine(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    x = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def make_wav(path: Path, seconds: float = 0.5, rate: int = 8000, channels: int = 1, **kw) -> Path:
    sf.write(path, sine(seconds, rate, channels=channels), rate, **kw)
    return path


def make_record(uid: str, path: Path, split: str = "train", votes=(1, 2, 0, 0), **extra) -> UtteranceRecord:
    return UtteranceRecord(
        id=uid,
        corpus="test",
        split=split,
        audio_path=path,
        transcript=f"text of {uid}",
        speaker="spk1",
        classes=CLASSES,
        votes={"primary": np.asarray(votes, dtype=np.float64), **extra.pop("more_votes", {})},
        **extra,
    )


def small_corpus(root: Path, n: int = 9) -> list[UtteranceRecord]:
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        path = make_wav(root / f"u{i}.wav", seconds=0.3 + 0.05 * i, rate=(8000, 44100, 16000)[i % 3])
        votes = rng.integers(0, 4, size=4)
        votes[i % 4] += 1
        records.append(make_record(f"utt{i:02d}", path, ("train", "val", "test")[i % 3], votes))
    return records


def read_samples(out_dir: Path) -> list[dict]:
    urls = [str(p) for p in shard_paths(out_dir)]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def dir_bytes(out_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out_dir.iterdir())}


# --------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------


def test_round_trip_decodes_16k_mono_with_spec_json(tmp_path):
    inputs = {
        "a.8k": make_wav(tmp_path / "a.wav", 0.5, 8000),
        "b.44k": make_wav(tmp_path / "b.flac", 0.4, 44100, channels=2),
        "c.16k": make_wav(tmp_path / "c.ogg", 0.3, 16000, format="OGG", subtype="VORBIS"),
    }
    records = [
        make_record("a.8k", inputs["a.8k"], votes=(3, 1, 0, 0), vad=[2.5, 3.0, 3.5], vad_scale=(1.0, 5.0)),
        make_record("b.44k", inputs["b.44k"], "val", votes=(0, 0, 0.5, 1.5), more_votes={"merged": [1, 0, 2, 3]}),
        make_record("c.16k", inputs["c.16k"], "test", votes=(1, 1, 1, 1)),
    ]
    card = write_shards(records, tmp_path / "out", progress=False)
    samples = {s["__key__"]: s for s in read_samples(tmp_path / "out")}
    assert sorted(samples) == ["a_8k", "b_44k", "c_16k"]  # '.' -> '_' in keys
    for key, seconds, tolerance in (("a_8k", 0.5, 0.005), ("b_44k", 0.4, 0.005), ("c_16k", 0.3, 0.05)):  # c: Vorbis
        audio, rate = sf.read(io.BytesIO(samples[key]["flac"]), dtype="float32")
        assert rate == 16000
        assert audio.ndim == 1
        assert abs(len(audio) - seconds * 16000) <= 1
        reference = sine(len(audio) / 16000, 16000)[: len(audio)]
        mid = slice(400, len(audio) - 400)  # away from resampling edge effects
        np.testing.assert_allclose(audio[mid], reference[mid], atol=tolerance)
        assert sf.info(io.BytesIO(samples[key]["flac"])).subtype == "PCM_16"
        meta = json.loads(samples[key]["json"])
        assert set(meta) == META_KEYS
        assert meta["duration"] == pytest.approx(len(audio) / 16000)
    meta = json.loads(samples["a_8k"]["json"])
    assert meta["id"] == "a.8k"
    assert meta["split"] == "train"
    assert meta["classes"] == list(CLASSES)
    assert meta["votes"] == {"primary": [3.0, 1.0, 0.0, 0.0]}
    assert meta["distribution"]["primary"] == pytest.approx([0.75, 0.25, 0, 0])
    assert meta["entropy"]["primary"] == pytest.approx(float(entropy([0.75, 0.25, 0, 0])))
    assert meta["vad"] == [2.5, 3.0, 3.5]
    assert meta["vad_scale"] == [1.0, 5.0]
    assert meta["transcript"] == "text of a.8k"
    assert meta["speaker"] == "spk1"
    meta = json.loads(samples["b_44k"]["json"])
    assert set(meta["votes"]) == {"primary", "merged"}
    assert meta["distribution"]["merged"] == pytest.approx([1 / 6, 0, 2 / 6, 3 / 6])
    assert meta["entropy"]["merged"] == pytest.approx(float(entropy([1, 0, 2, 3])))
    assert meta["vad"] is None
    assert meta["vad_scale"] is None
    assert meta["consensus"] is None  # the record gives none
    assert card["sources"] == ["primary"]  # merged is not in every sample
    assert card["num_samples"] == {"train": 1, "val": 1, "test": 1}


def test_load_audio_mixes_channels_to_mono(tmp_path):
    left = sine(0.5, 16000)
    sf.write(tmp_path / "st.wav", np.stack([left, np.zeros_like(left)], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "st.wav"), left / 2, atol=1e-7)


def test_encode_flac_clips_instead_of_wrapping():
    data, clipped = encode_flac(np.array([1.5, -1.5, 0.5, -0.25] * 100, dtype=np.float32))
    audio, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert clipped == 200
    assert rate == 16000
    np.testing.assert_allclose(audio[:4], [1.0, -1.0, 0.5, -0.25], atol=1e-4)


def test_tar_members_have_fixed_metadata(tmp_path):
    write_shards(small_corpus(tmp_path, 3), tmp_path / "out", progress=False)
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["utt00.flac", "utt00.json"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "ser", "ser")}


# --------------------------------------------------------------------------------------------
# Card, meta iteration, statistics
# --------------------------------------------------------------------------------------------


def test_card_matches_vote_statistics_and_shards(tmp_path):
    records = small_corpus(tmp_path, 9)
    card = write_shards(records, tmp_path / "out", maxcount=2, progress=False)
    assert card == read_card(tmp_path / "out")
    assert card["classes"] == list(CLASSES)
    assert card["sample_rate"] == 16000
    assert card["rejected"] == 0
    assert card["num_samples"] == {"train": 3, "val": 3, "test": 3}
    assert card["shards"]["train"] == ["train-000000.tar", "train-000001.tar"]
    assert list(card["shards"]) == ["train", "val", "test"]
    stats = shard_dir_statistics(tmp_path / "out")
    assert list(stats) == ["all", "train", "val", "test"]
    by_split = {s: np.array([r.votes["primary"] for r in records if r.split == s]) for s in ("train", "val", "test")}
    expected_all = vote_statistics(np.array([r.votes["primary"] for r in records]), CLASSES)
    assert set(stats["all"]) == set(STATS_KEYS)
    for key in STATS_KEYS:
        assert stats["all"][key] == pytest.approx(expected_all[key])
        for split, votes in by_split.items():
            assert stats[split][key] == pytest.approx(vote_statistics(votes, CLASSES)[key])
    metas = list(iter_shard_meta(tmp_path / "out"))
    # train in SHA-1-of-id order (mixes speakers and sessions across shards), the other splits by id
    train_order = sorted(["utt00", "utt03", "utt06"], key=lambda i: hashlib.sha1(i.encode()).hexdigest())
    assert [m["id"] for m in metas] == [*train_order, "utt01", "utt04", "utt07", "utt02", "utt05", "utt08"]
    assert [m["id"] for m in iter_shard_meta(tmp_path / "out", split="val")] == ["utt01", "utt04", "utt07"]
    with pytest.raises(KeyError, match="no split 'test1'"):
        list(iter_shard_meta(tmp_path / "out", split="test1"))


def test_card_label_sources_hold_train_tertile_edges_and_plurality_counts(tmp_path):
    votes = {"a": [3, 0, 0, 0], "b": [1, 1, 0, 0], "c": [0, 2, 2, 0], "d": [0, 0, 0, 5]}
    splits = {"a": "train", "b": "train", "c": "train", "d": "val"}
    records = [
        make_record(uid, make_wav(tmp_path / f"{uid}.wav"), splits[uid], v, more_votes={"merged": [1, 0, 0, 1]})
        for uid, v in votes.items()
    ]
    card = write_shards(records, tmp_path / "out", progress=False)
    assert card["sources"] == ["primary", "merged"]
    # train entropies 0, ln 2, ln 2 -> inner tertiles (linear interpolation) at 2/3 ln 2 and ln 2;
    # plurality with ties toward the first class: a -> 0, b -> 0 (tie), c -> 1 (tie); d is not train
    primary = card["label_sources"]["primary"]
    assert primary["class_counts"] == [2, 1, 0, 0]
    assert primary["tertile_edges"] == pytest.approx([2 / 3 * np.log(2), np.log(2)], abs=1e-12)
    assert primary["tertile_edges"] == pytest.approx(card["stats"]["train"]["tertile_edges"], abs=1e-15)
    assert card["label_sources"]["merged"]["class_counts"] == [3, 0, 0, 0]  # [1, 0, 0, 1] ties toward Anger
    assert card["label_sources"]["merged"]["tertile_edges"] == pytest.approx([np.log(2), np.log(2)], abs=1e-15)


def test_refresh_card_rebuilds_a_card_from_its_shards(tmp_path):
    card = write_shards(small_corpus(tmp_path, 9), tmp_path / "out", maxcount=2, progress=False)
    written = (tmp_path / "out" / "card.json").read_bytes()
    old = {k: v for k, v in card.items() if k != "label_sources"}  # a card written before label_sources
    (tmp_path / "out" / "card.json").write_text(json.dumps(old), encoding="utf-8")
    assert refresh_card(tmp_path / "out") == card
    assert (tmp_path / "out" / "card.json").read_bytes() == written


def test_read_card_names_missing_card_and_checks_the_label_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shard card"):
        read_card(tmp_path)
    write_shards(small_corpus(tmp_path, 3), tmp_path / "out", progress=False)
    assert read_card(tmp_path / "out", "primary")["sources"] == ["primary"]
    with pytest.raises(ValueError, match="label_source 'merged' is not in these shards"):
        read_card(tmp_path / "out", "merged")


# --------------------------------------------------------------------------------------------
# Rejections: never a crash, never a silent drop
# --------------------------------------------------------------------------------------------


def test_bad_audio_and_records_go_to_rejected_jsonl(tmp_path):
    good = make_wav(tmp_path / "good.wav")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really a wav file")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 8000)
    short = make_wav(tmp_path / "short.wav", seconds=0.1)
    nan = tmp_path / "nan.wav"
    bad = sine(0.5, 8000)
    bad[100] = np.nan
    sf.write(nan, bad, 8000, subtype="FLOAT")
    records = [
        make_record("good", good),
        make_record("broken", broken),
        make_record("empty", empty, "val"),
        make_record("short", short, "val"),
        make_record("nan", nan, "test"),
        make_record("missing", tmp_path / "nope.wav", "test"),
        make_record("novotes", good, votes=(0, 0, 0, 0)),
        make_record("badsplit", good, split="dev"),
        make_record("good", good),  # duplicate id
    ]
    report = ReadReport(skipped={"zzz": "no majority label", "aaa": "filtered by class set"})
    card = write_shards(records, tmp_path / "out", report=report, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    reasons = {r["id"]: r["reason"] for r in rows}
    assert len(rows) == 10
    assert card["rejected"] == 10
    assert card["num_samples"] == {"train": 1, "val": 0, "test": 0}
    assert card["shards"] == {"train": ["train-000000.tar"], "val": [], "test": []}
    assert reasons["broken"].startswith("audio does not decode")
    assert reasons["empty"] == "empty audio"
    assert reasons["short"].startswith("too short: 0.100 s")
    assert reasons["nan"] == "non-finite samples"
    assert reasons["missing"] == "missing audio file"
    assert reasons["novotes"] == "no primary votes"
    assert reasons["badsplit"].startswith("unknown split 'dev'")
    assert reasons["good"].startswith("duplicate id")
    assert reasons["zzz"] == "no majority label"
    assert [r["id"] for r in rows[:2]] == ["aaa", "zzz"]  # reader skips first, sorted
    assert {r["path"] for r in rows if r["id"] in ("aaa", "zzz")} == {""}
    assert {r["path"] for r in rows if r["id"] == "missing"} == {str(tmp_path / "nope.wav")}
    assert {r["keys"] for r in [{"keys": tuple(sorted(r))} for r in rows]} == {("id", "path", "reason", "split")}
    assert [m["id"] for m in iter_shard_meta(tmp_path / "out")] == ["good"]
    assert card["stats"]["val"]["items"] == 0
    summary = rejection_summary(tmp_path / "out")
    assert summary["reader"] == Counter({"no majority label": 1, "filtered by class set": 1})
    assert summary["val"] == Counter({"empty audio": 1, "too short": 1})


def test_invalid_vad_and_vote_shapes_are_rejected(tmp_path):
    good = make_wav(tmp_path / "good.wav")
    records = [
        make_record("ok", good),
        make_record("nanvad", good, vad=[1.0, float("nan"), 2.0], vad_scale=(1.0, 5.0)),
        make_record("shape", good, votes=(1, 2, 3)),
        make_record("negative", good, votes=(1, -1, 0, 0)),
    ]
    card = write_shards(records, tmp_path / "out", progress=False)
    rows = {json.loads(x)["id"]: json.loads(x)["reason"] for x in (tmp_path / "out" / "rejected.jsonl").open()}
    assert card["num_samples"] == {"train": 1}
    assert rows["nanvad"].startswith("vad must be 3 finite numbers")
    assert rows["shape"] == "primary votes have shape (3,), expected (4,)"
    assert rows["negative"] == "primary votes are negative or non-finite"


def test_mixed_class_sets_and_empty_input_raise(tmp_path):
    good = make_wav(tmp_path / "good.wav")
    other = UtteranceRecord("x", "t", "train", good, "", "", ("A", "B"), {"primary": np.array([1.0, 1.0])})
    with pytest.raises(ValueError, match="mix class sets"):
        write_shards([make_record("a", good), other], tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="no utterance records"):
        write_shards([], tmp_path / "out2", progress=False)


# --------------------------------------------------------------------------------------------
# Determinism, workers, output directory
# --------------------------------------------------------------------------------------------


def test_rerun_gives_identical_bytes(tmp_path):
    records = small_corpus(tmp_path, 6)
    write_shards(records, tmp_path / "one", maxcount=1, progress=False)
    write_shards(list(reversed(records)), tmp_path / "two", maxcount=1, progress=False)
    first = dir_bytes(tmp_path / "one")
    assert first == dir_bytes(tmp_path / "two")
    write_shards(records, tmp_path / "one", maxcount=1, progress=False)  # in place over a shard dir
    assert first == dir_bytes(tmp_path / "one")


def test_two_workers_give_the_same_bytes_as_one(tmp_path):
    records = small_corpus(tmp_path, 9)
    records.append(make_record("missing", tmp_path / "nope.wav"))
    write_shards(records, tmp_path / "w1", workers=1, maxcount=4, progress=False)
    write_shards(records, tmp_path / "w2", workers=2, maxcount=4, progress=False)
    assert dir_bytes(tmp_path / "w1") == dir_bytes(tmp_path / "w2")
    assert len(dir_bytes(tmp_path / "w1")) == 5  # card, rejected, train/val/test shards


def test_refuses_foreign_nonempty_dir_and_keeps_user_files(tmp_path):
    records = small_corpus(tmp_path, 3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no card.json"):
        write_shards(records, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    (out / "train-000007.tar").write_bytes(b"stale shard of an earlier run")
    write_shards(records, out, progress=False, overwrite=True)
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "card.json",
        "notes.txt",
        "rejected.jsonl",
        "test-000000.tar",
        "train-000000.tar",
        "val-000000.tar",
    ]
    assert (out / "notes.txt").read_text() == "mine"
    write_shards(records[:1], out, progress=False)  # a shard dir (card present) is replaced without overwrite
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "notes.txt", "rejected.jsonl", "train-000000.tar"]


def test_out_dir_that_is_a_file_raises(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        write_shards(small_corpus(tmp_path, 1), tmp_path / "f", progress=False)


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="maxcount >= 1"):
        write_shards(small_corpus(tmp_path, 1), tmp_path / "out", maxcount=0, progress=False)


def test_consensus_is_stored_and_one_outside_the_classes_is_rejected(tmp_path):
    records = [
        make_record("a", make_wav(tmp_path / "a.wav"), "train", consensus=CLASSES[1]),
        make_record("b", make_wav(tmp_path / "b.wav"), "train", consensus="Calm"),
    ]
    write_shards(records, tmp_path / "out", progress=False)
    assert [m["consensus"] for m in iter_shard_meta(tmp_path / "out")] == [CLASSES[1]]
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejected.jsonl").read_text().splitlines()]
    reason = f"consensus 'Calm' is not one of the classes {list(CLASSES)}"
    assert [(r["id"], r["reason"]) for r in rejected] == [("b", reason)]
