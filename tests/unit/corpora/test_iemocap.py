"""IEMOCAP reader on a fixture in the original release layout (votes checked against hand counts)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ser_lightning.corpora.iemocap import read_iemocap
from ser_lightning.corpora.splits import random_split

F000, M000 = "Ses01F_impro01_F000", "Ses01F_impro01_M000"
F001, F002, F003 = "Ses01F_impro01_F001", "Ses01F_impro01_F002", "Ses01F_impro01_F003"
S2F000, S2M000, S2M001 = "Ses02M_script01_1_F000", "Ses02M_script01_1_M000", "Ses02M_script01_1_M001"
S5F000 = "Ses05F_impro02_F000"


def _by_id(records):
    return {r.id: r for r in records}


def test_iemocap4_votes_vad_and_filter(iemocap_root: Path) -> None:
    records, report = read_iemocap(iemocap_root)
    recs = _by_id(records)
    assert list(recs) == [F000, M000, S2F000, S2M001, S5F000]
    assert records[0].classes == ("Anger", "Happiness", "Neutral", "Sadness")
    # Three external evaluators say "Neutral state"; the self-rating C-F1 is left out.
    np.testing.assert_allclose(recs[F000].votes["primary"], [0, 0, 3, 0])
    # C-E2 "Anger; Sadness;" is one vote split 0.5/0.5 (its comment holds ';' and spaces).
    np.testing.assert_allclose(recs[M000].votes["primary"], [2.5, 0, 0, 0.5])
    np.testing.assert_allclose(recs[S2F000].votes["primary"], [0, 0, 0, 3])
    np.testing.assert_allclose(recs[S2M001].votes["primary"], [0, 0, 2, 0])
    # VAD: mean of A-E3 (3,2,2) and A-E4 (2,3,3) -> [val, act, dom]; no A-line -> summary [V, A, D].
    np.testing.assert_allclose(recs[F000].vad, [2.5, 2.5, 2.5])
    np.testing.assert_allclose(recs[M000].vad, [2.0, 3.5, 3.5])
    np.testing.assert_allclose(recs[S2M001].vad, [3.0, 2.0, 3.0])
    assert recs[F000].vad_scale == (1.0, 5.0)
    # One tag outside the four classes drops the utterance, with the reason.
    assert set(report.skipped) == {F001, F002, F003, S2M000}
    assert "Frustration" in report.skipped[F001]
    assert "Excited" in report.skipped[F002]
    assert "Surprise" in report.skipped[F002]
    assert report.skipped[S2M000].startswith("audio file missing")
    assert report.ignored_labels == Counter()
    assert report.notes["missing_transcript"] == 1


def test_transcript_speaker_audio(iemocap_root: Path) -> None:
    recs = _by_id(read_iemocap(iemocap_root)[0])
    assert recs[F000].transcript == "Excuse me."
    assert recs[S2M001].transcript == ""
    assert recs[M000].speaker == "Ses01_M"
    assert recs[S2F000].speaker == "Ses02_F"
    assert recs[F000].audio_path == iemocap_root / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"
    assert all(r.audio_path.is_file() and r.corpus == "iemocap" for r in recs.values())


def test_iemocap4x_excited_and_plurality(iemocap_root: Path) -> None:
    records, report = read_iemocap(iemocap_root, "iemocap4x")
    recs = _by_id(records)
    # Excited (1) + "Happiness; Excited;" (0.5 + 0.5) -> Happiness 2; Surprise 1 is outside and ignored.
    np.testing.assert_allclose(recs[F002].votes["primary"], [0, 2, 0, 0])
    assert recs[F002].vad == [4.0, 3.5, 3.0]  # no dimensional line: the summary's [V, A, D]
    # Anger 0.5 + 1 = 1.5 ties Frustration 0.5 + 1 = 1.5: the tie goes to the class of the set.
    np.testing.assert_allclose(recs[F001].votes["primary"], [1.5, 0, 0, 0])
    assert recs[F001].transcript == "Yeah; I do."
    # Frustration 2 > Anger 1: the plurality is outside, so the utterance is dropped.
    assert F003 not in recs
    assert "Frustration" in report.skipped[F003]
    assert report.ignored_labels == Counter({"Frustration": 2, "Surprise": 1})
    # the plurality rule drops votes by definition: their shares are counted, per tag
    assert report.out_of_set_votes == "drop"
    assert report.dropped_votes == Counter({"Frustration": 1.5, "Surprise": 1.0})
    assert report.utterances_with_dropped_votes == 2


def test_iemocap4_rejects_outside_tags_unless_dropping_is_asked(iemocap_root: Path) -> None:
    _, report = read_iemocap(iemocap_root)
    assert report.out_of_set_votes == "reject"
    assert report.skipped[F001].startswith("votes outside class set iemocap4: Frustration=1.5 (pass --drop-out")
    assert not report.dropped_votes
    records, report = read_iemocap(iemocap_root, drop_out_of_set_votes=True)
    recs = _by_id(records)
    assert {F001, F002, F003} <= set(recs)
    np.testing.assert_allclose(recs[F001].votes["primary"], [1.5, 0, 0, 0])
    np.testing.assert_allclose(recs[F002].votes["primary"], [0, 0.5, 0, 0])
    np.testing.assert_allclose(recs[F003].votes["primary"], [1, 0, 0, 0])
    assert report.dropped_votes == Counter({"Frustration": 3.5, "Excited": 1.5, "Surprise": 1.0})
    assert report.utterances_with_dropped_votes == 3


def test_undecodable_transcript_names_file_and_line(iemocap_root: Path) -> None:
    path = iemocap_root / "Session2" / "dialog" / "transcriptions" / "Ses02M_script01_1.txt"
    path.write_bytes(path.read_bytes() + b"Ses02M_script01_1_M000 [003.0000-004.0000]: Ol\xe9.\n")
    with pytest.raises(ValueError, match=r"Ses02M_script01_1.txt:2: not utf-8 text"):
        read_iemocap(iemocap_root)


def test_self_ratings_included(iemocap_root: Path) -> None:
    recs = _by_id(read_iemocap(iemocap_root, self_ratings=True)[0])
    np.testing.assert_allclose(recs[F000].votes["primary"], [0, 0, 4, 0])
    np.testing.assert_allclose(recs[M000].votes["primary"], [3.5, 0, 0, 0.5])
    # A-F1 (3,2,1) joins A-E3, A-E4; A-M1 (1,5,5) joins A-E1, A-E2.
    np.testing.assert_allclose(recs[F000].vad, [8 / 3, 7 / 3, 2.0])
    np.testing.assert_allclose(recs[M000].vad, [5 / 3, 4.0, 4.0])


def test_random_split_is_seeded(iemocap_root: Path) -> None:
    records, _ = read_iemocap(iemocap_root, seed=3)
    expected = random_split([r.id for r in records], ratios=(0.8, 0.1, 0.1), seed=3)
    assert {r.id: r.split for r in records} == expected
    assert Counter(r.split for r in records) == Counter({"train": 3, "val": 1, "test": 1})
    again, _ = read_iemocap(iemocap_root, seed=3)
    assert [r.split for r in again] == [r.split for r in records]


def test_session_split(iemocap_root: Path) -> None:
    records, _ = read_iemocap(iemocap_root, split="session", test_session=5)  # val: the next session, 5 -> 1
    assert {r.id: r.split for r in records} == {
        F000: "val",
        M000: "val",
        S2F000: "train",
        S2M001: "train",
        S5F000: "test",
    }
    records, _ = read_iemocap(iemocap_root, split="session", test_session=1, val_session=5)
    assert {r.split for r in records if r.id.startswith("Ses01")} == {"test"}
    assert {r.split for r in records if r.id.startswith("Ses05")} == {"val"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"split": "session"}, "needs test_session"),
        ({"split": "session", "test_session": 2}, "Session3"),
        ({"split": "session", "test_session": 1, "val_session": 1}, "differ"),
        ({"split": "speaker"}, "split must be"),
    ],
)
def test_bad_split_arguments(iemocap_root: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        read_iemocap(iemocap_root, **kwargs)


def test_malformed_line_names_file_and_line(iemocap_root: Path) -> None:
    path = iemocap_root / "Session5/dialog/EmoEvaluation/Ses05F_impro02.txt"
    text = path.read_text(encoding="utf-8").replace("C-E2:\tAnger;", "C-E2 Anger")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=r"Ses05F_impro02.txt:5: unrecognised line"):
        read_iemocap(iemocap_root)


def test_bad_dimensional_line(iemocap_root: Path) -> None:
    path = iemocap_root / "Session5/dialog/EmoEvaluation/Ses05F_impro02.txt"
    path.write_text(path.read_text(encoding="utf-8").replace("dom  4;", "dom ;"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"Ses05F_impro02.txt:6: .*dom"):
        read_iemocap(iemocap_root)


def test_missing_release(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="EmoEvaluation"):
        read_iemocap(tmp_path)
