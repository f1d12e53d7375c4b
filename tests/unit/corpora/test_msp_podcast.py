"""MSP-Podcast 2.x reader: primary and merged votes against hand counts, VAD, splits and errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ser_lightning.corpora.msp_podcast import read_msp_podcast
from ser_lightning.corpora.splits import fold_split

U0008, U0019, U0033 = "MSP-PODCAST_0001_0008", "MSP-PODCAST_0001_0019", "MSP-PODCAST_0002_0033"
U0003, U0004, U0005, U0006 = (
    "MSP-PODCAST_0003_0001",
    "MSP-PODCAST_0004_0002",
    "MSP-PODCAST_0005_0003",
    "MSP-PODCAST_0006_0004",
)
# msp8 order: Angry, Sad, Happy, Surprise, Fear, Disgust, Contempt, Neutral (+ Other in msp9)


def _by_id(records):
    return {r.id: r for r in records}


def _merged(primary: list[float], shares: list[float], wp: float = 0.95, ws: float = 0.05) -> np.ndarray:
    """Reference: normalise(wp P + ws S) as effective votes (times the primary vote count)."""
    p, s = np.asarray(primary, dtype=float), np.asarray(shares, dtype=float)
    mix = wp * p / p.sum() + ws * (s / s.sum() if s.sum() else s)
    return mix / mix.sum() * p.sum()


def test_primary_and_merged_votes_msp8(msp_root: Path) -> None:
    records, report = read_msp_podcast(msp_root, drop_out_of_set_votes=True)
    recs = _by_id(records)
    assert list(recs) == [U0008, U0019, U0033, U0004, U0005]
    # 0008: majors Neutral x3, Happy, Other-Curious (not in msp8: ignored, counted as "Other").
    np.testing.assert_allclose(recs[U0008].votes["primary"], [0, 0, 1, 0, 0, 0, 0, 3])
    # Secondary shares: W1 Neutral+Concerned(Sad) 1/2 each, W2 Neutral 1, W3 Happy+Amused(Happy)+Surprise -> Happy,
    # Surprise 1/2 each, W4 Other-Curious (no Other: "Curious", outside) + Neutral -> Neutral 1; W5 none.
    shares = [0, 0.5, 0.5, 0.5, 0, 0, 0, 2.5]
    np.testing.assert_allclose(recs[U0008].votes["merged"], _merged([0, 0, 1, 0, 0, 0, 0, 3], shares))
    np.testing.assert_allclose(recs[U0008].votes["merged"], [0, 0.025, 0.975, 0.025, 0, 0, 0, 2.975])  # by hand
    # 0033: "Angry,Anger,Annoyed" is one Angry vote, "Contempt,Angry" half each, Frustrated is Angry.
    np.testing.assert_allclose(recs[U0033].votes["primary"], [3, 0, 0, 0, 0, 1, 1, 0])
    shares = [2.5, 0, 0, 0, 0, 1, 0.5, 0]
    np.testing.assert_allclose(recs[U0033].votes["merged"], _merged([3, 0, 0, 0, 0, 1, 1, 0], shares))
    np.testing.assert_allclose(recs[U0019].votes["merged"], _merged([0, 0, 2, 1, 0, 0, 0, 0], [0, 0, 2, 0, 0, 0, 0, 0]))
    np.testing.assert_allclose(recs[U0004].votes["merged"], [0, 2, 0, 0, 0, 0, 0, 0])
    assert report.notes["secondary_outside_class_set"] == 1  # Other-Curious of 0008
    rule = {"name": "authors-weighted", "primary_weight": 0.95, "secondary_weight": 0.05}
    assert report.label_rules == {"merged": rule}
    # 0003_0001: three Other majors, none in msp8 -> skipped; 0006_0004 has no per-rater row.
    assert set(report.skipped) == {U0003, U0006}
    assert "no primary vote inside class set msp8" in report.skipped[U0003]
    assert "labels_detailed.csv" in report.skipped[U0006]
    assert report.ignored_labels == Counter({"Other": 4})
    assert report.dropped_votes == Counter({"Other": 1.0})  # only 0008 is kept with an Other vote
    assert report.utterances_with_dropped_votes == 1
    assert report.notes["detailed_without_consensus"] == 1


def test_primary_vote_outside_class_set_rejects_by_default(msp_root: Path) -> None:
    """0008 (Neutral x3, Happy, Other-Curious) must not silently become a 4-vote msp8 target."""
    records, report = read_msp_podcast(msp_root)
    assert U0008 not in _by_id(records)
    assert report.out_of_set_votes == "reject"
    assert report.skipped[U0008].startswith("votes outside class set msp8: Other=1 (pass --drop-out-of-set-votes")
    assert "no primary vote inside class set msp8" in report.skipped[U0003]
    assert not report.dropped_votes
    # with msp9 nothing is outside the set: nothing is rejected for it
    records, report = read_msp_podcast(msp_root, "msp9")
    assert U0008 in _by_id(records)
    assert not any("outside class set" in r for r in report.skipped.values())


def test_msp9_keeps_other(msp_root: Path) -> None:
    records, report = read_msp_podcast(msp_root, "msp9")
    recs = _by_id(records)
    np.testing.assert_allclose(recs[U0008].votes["primary"], [0, 0, 1, 0, 0, 0, 0, 3, 1])
    # W4's Other-Curious secondary is Other with msp9: Other and Neutral half each
    shares = [0, 0.5, 0.5, 0.5, 0, 0, 0, 2.0, 0.5]
    np.testing.assert_allclose(recs[U0008].votes["merged"], _merged([0, 0, 1, 0, 0, 0, 0, 3, 1], shares))
    np.testing.assert_allclose(recs[U0003].votes["primary"], [0, 0, 0, 0, 0, 0, 0, 0, 3])
    np.testing.assert_allclose(recs[U0003].votes["merged"], [0, 0, 0, 0, 0, 0, 0, 0, 3])  # no secondary: P
    assert recs[U0003].split == "test2"
    assert report.notes["secondary_outside_class_set"] == 0
    assert report.ignored_labels == Counter()


def test_merged_weights(msp_root: Path) -> None:
    recs = _by_id(read_msp_podcast(msp_root, merged_weights=(0.5, 0.5), drop_out_of_set_votes=True)[0])
    # P = (Happy 1/4, Neutral 3/4), S = (Sad 1/8, Happy 1/8, Surprise 1/8, Neutral 5/8); x 4 votes
    np.testing.assert_allclose(recs[U0008].votes["merged"], [0, 0.25, 0.75, 0.25, 0, 0, 0, 2.75])
    np.testing.assert_allclose(recs[U0008].votes["primary"], [0, 0, 1, 0, 0, 0, 0, 3])
    with pytest.raises(ValueError, match="merged weights"):
        read_msp_podcast(msp_root, merged_weights=(0.0, 0.0))


def test_vad_speaker_transcript_audio(msp_root: Path) -> None:
    records, report = read_msp_podcast(msp_root, drop_out_of_set_votes=True)
    recs = _by_id(records)
    # Per-rater means: val (4+5+4+3+4)/5, act (4+4+5+4+4)/5, dom (4+4+5+4+5)/5 -> [val, act, dom].
    np.testing.assert_allclose(recs[U0008].vad, [4.0, 4.2, 4.4])
    np.testing.assert_allclose(recs[U0019].vad, [17 / 3, 14 / 3, 14 / 3])
    assert recs[U0008].vad_scale == (1.0, 7.0)
    assert recs[U0008].speaker == "127"
    assert recs[U0033].speaker == "Unknown"
    assert recs[U0008].transcript == "so what did you think of it"
    assert recs[U0005].transcript == ""
    assert report.notes["missing_transcript"] == 1
    assert recs[U0008].audio_path == msp_root / "Audios" / f"{U0008}.wav"
    assert all(r.corpus == "msp-podcast" for r in records)


def test_official_split_mapping(msp_root: Path) -> None:
    records, _ = read_msp_podcast(msp_root, "msp9")
    assert {r.id: r.split for r in records} == {
        U0008: "val",  # Development
        U0019: "train",
        U0033: "test1",
        U0003: "test2",
        U0004: "test3",
        U0005: "val",  # Validation
    }


def test_folds_split(msp_root: Path) -> None:
    records, _ = read_msp_podcast(msp_root, split="folds", fold=2, seed=5, drop_out_of_set_votes=True)
    ids = [r.id for r in records]
    assert {r.id: r.split for r in records} == fold_split(ids, folds=5, fold=2, seed=5)
    assert Counter(r.split for r in records) == Counter({"train": 3, "val": 1, "test": 1})


def test_unknown_split_set_names_file_and_line(msp_root: Path) -> None:
    path = msp_root / "Labels" / "labels_consensus.csv"
    path.write_text(path.read_text(encoding="utf-8").replace(",Test3", ",Test4"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"labels_consensus.csv:6: unknown Split_Set 'Test4'"):
        read_msp_podcast(msp_root)


def test_missing_detailed_labels(msp_root: Path) -> None:
    (msp_root / "Labels" / "labels_detailed.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"release 2\.x per-rater labels"):
        read_msp_podcast(msp_root)
    (msp_root / "Labels" / "labels_detailed.json").write_text("{}", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"release 1\.x"):
        read_msp_podcast(msp_root)


def test_bad_detailed_rows(msp_root: Path) -> None:
    path = msp_root / "Labels" / "labels_detailed.csv"
    original = path.read_text(encoding="utf-8")
    path.write_text(original.replace("WORKER00005,Neutral,,4,4,5", "WORKER00005,Neutral,,4,high,5"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"labels_detailed.csv:6: EmoVal is not a number: 'high'"):
        read_msp_podcast(msp_root)
    path.write_text(original.replace("EmoClass_Second,", ""), encoding="utf-8")
    with pytest.raises(ValueError, match=r"labels_detailed.csv:1: missing column\(s\) \['EmoClass_Second'\]"):
        read_msp_podcast(msp_root)


def test_undecodable_transcript_and_label_rows_name_the_file(msp_root: Path) -> None:
    (msp_root / "Transcripts" / "MSP-PODCAST_0001_0019.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match=r"MSP-PODCAST_0001_0019.txt:1: not utf-8 text"):
        read_msp_podcast(msp_root, "msp9")
    path = msp_root / "Labels" / "labels_detailed.csv"
    path.write_bytes(path.read_bytes().replace(b"WORKER00006,Happy", b"WORKER00006,H\xe4ppy"))
    with pytest.raises(ValueError, match=r"labels_detailed.csv:8: not utf-8 text"):
        read_msp_podcast(msp_root, "msp9")
