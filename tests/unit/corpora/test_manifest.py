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
    classes = ["Anger", "Happiness", "Neutral", "Sadness"]
    # By default a row with a label outside the class set is rejected, with the labels in the reason.
    records, report = read_manifest(path, classes, root=wav_dir)
    assert records == []
    assert report.out_of_set_votes == "reject"
    assert report.skipped["a"].startswith("votes outside class set custom: Frustration=1 (")
    assert report.skipped["b"].startswith("votes outside class set custom: Neutral state=1 (")
    assert not report.dropped_votes
    # Opting in keeps the rows without those votes, and counts what was dropped.
    records, report = read_manifest(path, classes, root=wav_dir, drop_out_of_set_votes=True)
    recs = _by_id(records)
    np.testing.assert_allclose(recs["a"].votes["primary"], [2, 0, 0, 0])
    np.testing.assert_allclose(recs["b"].votes["primary"], [0, 1, 0, 0])  # "Neutral state" is no class here
    assert report.ignored_labels == Counter({"Frustration": 1, "Neutral state": 1})
    assert report.dropped_votes == Counter({"Frustration": 1.0, "Neutral state": 1.0})
    assert report.utterances_with_dropped_votes == 2
    assert report.out_of_set_votes == "drop"
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
    records, report = read_manifest(_write_jsonl(wav_dir / "m.jsonl", JSONL_ROWS), "msp8", drop_out_of_set_votes=True)
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
    assert report.dropped_votes == Counter({"Other": 1, "Boredom": 1})  # of kept rows only (not w)
    assert report.utterances_with_dropped_votes == 2
    assert report.skipped["missing"].startswith("audio file missing")
    assert report.skipped["w"] == "no vote inside the class set msp8"
    # Without the opt-in, x (Other) and z (Boredom) are rejected instead.
    records, report = read_manifest(wav_dir / "m.jsonl", "msp8")
    assert [r.id for r in records] == ["why"]
    assert report.skipped["x"].startswith("votes outside class set msp8: Other=1 (pass --drop-out-of-set-votes")
    assert report.skipped["z"].startswith("votes outside class set msp8: Boredom=1 (")


def test_random_split(wav_dir: Path) -> None:
    path = _write_jsonl(wav_dir / "m.jsonl", JSONL_ROWS)
    records, _ = read_manifest(path, "msp8", split="random", seed=2, drop_out_of_set_votes=True)
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


ISSUE_CSV = (
    "audio,split,Angry,Happy,Sad,Neutral,Surprise,age\nwav/a.wav,train,0,0,0,1,9,41\nwav/b.wav,train,2,0,0,1,,30\n"
)


def test_csv_vote_column_outside_class_set_is_not_a_silent_neutral_target(wav_dir: Path) -> None:
    """The fault of issue 15: Surprise 9 + Neutral 1 with Angry,Happy,Sad,Neutral became 100 % Neutral."""
    path = wav_dir / "m.csv"
    path.write_text(ISSUE_CSV, encoding="utf-8")
    classes = "Angry,Happy,Sad,Neutral"
    records, report = read_manifest(path, classes)
    assert [r.id for r in records] == ["b"]  # b's Surprise cell is empty: nothing outside
    assert report.skipped == {"a": report.skipped["a"]}
    assert report.skipped["a"].startswith("votes outside class set custom: Surprise=9 (")
    assert report.notes == Counter({"unused_column:age": 1})  # not an emotion: not a vote column
    records, report = read_manifest(path, classes, drop_out_of_set_votes=True)
    recs = _by_id(records)
    np.testing.assert_allclose(recs["a"].votes["primary"], [0, 0, 0, 1])
    assert report.dropped_votes == Counter({"Surprise": 9.0})
    assert report.utterances_with_dropped_votes == 1


def test_jsonl_vote_dict_outside_class_set(wav_dir: Path) -> None:
    row = {"audio": "clips/x.wav", "votes": {"Surprise": 9, "Neutral": 1, "Angry": 0}, "split": "train"}
    path = _write_jsonl(wav_dir / "m.jsonl", [row])
    records, report = read_manifest(path, "Angry,Happy,Sad,Neutral")
    assert records == []
    assert "Surprise=9" in report.skipped["x"]
    records, report = read_manifest(path, "Angry,Happy,Sad,Neutral", drop_out_of_set_votes=True)
    np.testing.assert_allclose(records[0].votes["primary"], [0, 0, 0, 1])
    assert report.dropped_votes == Counter({"Surprise": 9.0})
    # a zero count outside the set loses nothing and is no reason to reject
    path = _write_jsonl(wav_dir / "z.jsonl", [{**row, "votes": {"Surprise": 0, "Neutral": 1}}])
    records, report = read_manifest(path, "Angry,Happy,Sad,Neutral")
    assert [r.id for r in records] == ["x"]
    assert not report.skipped


def test_undecodable_and_malformed_text_name_file_and_line(wav_dir: Path) -> None:
    path = wav_dir / "bad.jsonl"
    good = json.dumps(JSONL_ROWS[1]).encode()
    path.write_bytes(good + b"\n" + good + b"\n" + b'{"audio": "caf\xe9.wav"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:3: not utf-8 text"):
        read_manifest(path, "msp8")
    csv_path = wav_dir / "bad.csv"
    csv_path.write_bytes(b"audio,labels,split\nwav/a.wav,Sad,train\nwav/b.wav,Tr\xeariste,train\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: not utf-8 text"):
        read_manifest(csv_path, "msp8")
    csv_path.write_text('audio,labels,split\nwav/a.wav,Sad,train\nwav/b.wav,"' + "x" * 200_000 + '",train\n')
    with pytest.raises(ValueError, match=r"bad.csv:3: malformed CSV \(field larger than field limit"):
        read_manifest(csv_path, "msp8")
