"""Manifest reader: CSV and JSON Lines, vote columns, vote dicts/lists, rater labels, VAD, splits, errors."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ser_lightning.corpora.manifest import read_manifest
from ser_lightning.corpora.splits import random_split

CSV_COUNTS = (
    "audio,id,transcript,Anger,happiness,Neutral,Sadness,valence,arousal,dominance,vad_scale,speaker,split,extra\n"
    'wav/a.wav,,hello there,2,1,0,0,2.5,3.5,3,"1,5",spk1,train,x\n'
    "wav/b.wav,b_utt,,0,0,3,0,,,,,spk2,dev,y\n"
    "wav/c.wav,,,0,0,0,2,,,,,,Validation,z\n"
)


def _by_id(records):
    return {r.id: r for r in records}


@pytest.fixture
def wav_dir(tmp_path: Path, wav_writer: Callable[..., Path]) -> Path:
    for name in ("a", "b", "c"):
        wav_writer(tmp_path / "wav" / f"{name}.wav")
    for name in ("x", "y", "z", "w"):
        wav_writer(tmp_path / "clips" / f"{name}.wav")
    return tmp_path


def test_csv_vote_columns(wav_dir: Path) -> None:
    path = wav_dir / "manifest.csv"
    path.write_text(CSV_COUNTS, encoding="utf-8")
    records, report = read_manifest(path, "iemocap4")
    recs = _by_id(records)
    assert list(recs) == ["a", "b_utt", "c"]
    np.testing.assert_allclose(recs["a"].votes["primary"], [2, 1, 0, 0])
    np.testing.assert_allclose(recs["b_utt"].votes["primary"], [0, 0, 3, 0])
    assert recs["a"].vad == [2.5, 3.5, 3.0]
    assert recs["a"].vad_scale == (1.0, 5.0)
    assert recs["b_utt"].vad is None
    assert recs["b_utt"].vad_scale is None
    assert (recs["a"].transcript, recs["a"].speaker, recs["a"].split) == ("hello there", "spk1", "train")
    assert recs["b_utt"].split == "val"
    assert recs["c"].split == "val"
    assert recs["a"].audio_path == wav_dir / "wav" / "a.wav"
    assert recs["a"].corpus == "manifest"
    assert recs["a"].classes == ("Anger", "Happiness", "Neutral", "Sadness")
    assert report.notes == Counter({"unused_column:extra": 1})


def test_csv_rater_labels_and_root(tmp_path: Path, wav_dir: Path) -> None:
    folder = tmp_path / "lists"
    folder.mkdir()
    path = folder / "m.csv"
    path.write_text(
        "audio,labels,split\nwav/a.wav,Anger;Anger;Frustration,test\nwav/b.wav,Neutral state; Happiness,train\n",
        encoding="utf-8",
    )
    records, report = read_manifest(path, ["Anger", "Happiness", "Neutral", "Sadness"], root=wav_dir)
    recs = _by_id(records)
    np.testing.assert_allclose(recs["a"].votes["primary"], [2, 0, 0, 0])
    np.testing.assert_allclose(recs["b"].votes["primary"], [0, 1, 0, 0])  # "Neutral state" is no class here
    assert report.ignored_labels == Counter({"Frustration": 1, "Neutral state": 1})
    # With the registered class set the corpus alias maps.
    recs = _by_id(read_manifest(path, "iemocap4", root=wav_dir)[0])
    np.testing.assert_allclose(recs["b"].votes["primary"], [0, 1, 1, 0])


JSONL_ROWS = [
    {"audio": "clips/x.wav", "votes": {"Angry": 2, "Neutral": 1, "Other": 1}, "split": "valid", "speaker": "s1"},
    {
        "audio": "clips/y.wav",
        "id": "why",
        "votes": [0, 1, 0, 0, 0, 0, 0, 2],
        "split": "test1",
        "valence": 3,
        "arousal": 4,
        "dominance": 5,
        "vad_scale": [1, 7],
    },
    {
        "audio": "clips/z.wav",
        "labels": ["Happy", ["Happy", "Surprise"], "Boredom"],
        "split": "train",
        "transcript": "hi",
    },
    {"audio": "clips/missing.wav", "labels": ["Sad"], "split": "train"},
    {"audio": "clips/w.wav", "labels": ["Boredom"], "split": "train"},
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    return path


def test_jsonl_votes_labels_vad(wav_dir: Path) -> None:
    records, report = read_manifest(_write_jsonl(wav_dir / "m.jsonl", JSONL_ROWS), "msp8")
    recs = _by_id(records)
    assert list(recs) == ["x", "why", "z"]
    np.testing.assert_allclose(recs["x"].votes["primary"], [2, 0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_allclose(recs["why"].votes["primary"], [0, 1, 0, 0, 0, 0, 0, 2])
    # ["Happy", ["Happy", "Surprise"], "Boredom"]: the second rater's vote splits 0.5/0.5.
    np.testing.assert_allclose(recs["z"].votes["primary"], [0, 0, 1.5, 0.5, 0, 0, 0, 0])
    assert recs["why"].vad == [3.0, 4.0, 5.0]
    assert recs["why"].vad_scale == (1.0, 7.0)
    assert [recs[i].split for i in ("x", "why", "z")] == ["val", "test1", "train"]
    assert recs["z"].transcript == "hi"
    assert recs["x"].speaker == "s1"
    assert report.ignored_labels == Counter({"Other": 1, "Boredom": 2})
    assert report.skipped["missing"].startswith("audio file missing")
    assert report.skipped["w"] == "no vote inside the class set msp8"


def test_random_split(wav_dir: Path) -> None:
    records, _ = read_manifest(_write_jsonl(wav_dir / "m.jsonl", JSONL_ROWS), "msp8", split="random", seed=2)
    assert {r.id: r.split for r in records} == random_split(["x", "why", "z"], seed=2)


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"audio": "clips/y.wav", "labels": ["Sad"], "split": "holdout"}, "split 'holdout' is not one of"),
        ({"audio": "clips/y.wav", "labels": ["Sad"]}, "no 'split' given"),
        ({"audio": "clips/y.wav", "labels": ["Sad"], "votes": [1] * 8, "split": "train"}, "not both"),
        ({"audio": "clips/y.wav", "votes": {"Sad": -1}, "split": "train"}, "negative vote count"),
        ({"audio": "clips/y.wav", "votes": [1, 2], "split": "train"}, "2 counts for 8 classes"),
        ({"audio": "clips/y.wav", "votes": {"Sad": "many"}, "split": "train"}, "not a number"),
        ({"audio": "clips/y.wav", "labels": "Sad", "split": "train"}, "must be a list"),
        ({"audio": "clips/y.wav", "labels": ["Sad"], "valence": 2, "split": "train"}, "all of"),
        ({"labels": ["Sad"], "split": "train"}, "missing 'audio'"),
        ({"audio": "clips/z.wav", "id": "x", "labels": ["Sad"], "split": "train"}, "id 'x' already used on line 1"),
    ],
)
def test_row_errors_name_file_and_line(wav_dir: Path, row: dict, match: str) -> None:
    path = _write_jsonl(wav_dir / "bad.jsonl", [JSONL_ROWS[0], row])
    with pytest.raises(ValueError, match=rf"bad.jsonl:2: .*{match}"):
        read_manifest(path, "msp8")


def test_file_level_errors(wav_dir: Path) -> None:
    path = wav_dir / "bad.jsonl"
    path.write_text('{"audio": "clips/x.wav", "labels": ["Sad"], "split": "train"}\n{oops\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        read_manifest(path, "msp8")
    csv_path = wav_dir / "m.csv"
    csv_path.write_text("audio,Anger,Happiness,split\nwav/a.wav,1,0,train\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"m.csv:1: vote-count columns for classes \['Neutral', 'Sadness'\]"):
        read_manifest(csv_path, "iemocap4")
    csv_path.write_text("path,labels\nwav/a.wav,Anger\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"m.csv:1: the manifest needs an 'audio' column"):
        read_manifest(csv_path, "iemocap4")
    csv_path.write_text("audio,labels,split\nwav/a.wav,Anger,train,extra\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"m.csv:2: expected 3 fields"):
        read_manifest(csv_path, "iemocap4")
    with pytest.raises(ValueError, match=r"must end in .csv, .jsonl"):
        read_manifest(wav_dir / "m.tsv", "iemocap4")
