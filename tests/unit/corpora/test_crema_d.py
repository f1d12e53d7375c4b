"""CREMA-D reader on real vote rows (copied from ../shared into the original layout) and stand-in WAVs."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ser_lightning.corpora.crema_d import SENTENCES, read_crema_d
from ser_lightning.corpora.splits import group_split

ACTORS = [str(a) for a in range(1001, 1020)] + ["1076"]
NO_AUDIO = "1076_MTI_SAD_XX"  # the corpus README: this clip has no audio


def _pick_lines(votes_path: Path) -> tuple[str, list[str], list[dict[str, str]]]:
    """Header, the copied raw lines (12 voice rows per actor + 5 face rows), and the voice rows parsed."""
    lines = votes_path.read_text(encoding="utf-8").splitlines()
    picked: list[str] = []
    voice: list[dict[str, str]] = []
    per_actor: Counter[str] = Counter()
    faces = 0
    header = next(csv.reader([lines[0]]))
    for line in lines[1:]:
        if not any(f'"{a}_' in line for a in ACTORS):
            continue
        row = dict(zip(header, next(csv.reader([line])), strict=True))
        actor, sentence = row["fileName"].split("_")[:2]
        if actor not in ACTORS:
            continue
        is_voice = row[""].startswith("1")
        wanted_1076 = actor == "1076" and (sentence == "MTI" or per_actor[actor] < 6)
        if is_voice and per_actor[actor] < 12 and (actor != "1076" or wanted_1076):
            per_actor[actor] += 1
            picked.append(line)
            voice.append(row)
        elif not is_voice and row[""].startswith("2") and faces < 5:
            faces += 1
            picked.append(line)
    return lines[0], picked, voice


@pytest.fixture(scope="module")
def picked_rows(crema_d_votes_path: Path) -> tuple[str, list[str], list[dict[str, str]]]:
    return _pick_lines(crema_d_votes_path)


@pytest.fixture
def crema_root(
    tmp_path: Path, picked_rows: tuple[str, list[str], list[dict[str, str]]], wav_writer: Callable[..., Path]
) -> tuple[Path, list[dict]]:
    header, picked, voice = picked_rows
    root = tmp_path / "CREMA-D"
    (root / "processedResults").mkdir(parents=True)
    (root / "processedResults" / "tabulatedVotes.csv").write_text("\n".join([header, *picked]) + "\n", encoding="utf-8")
    for i, row in enumerate(voice):
        if row["fileName"] != NO_AUDIO:
            wav_writer(root / "AudioWAV" / f"{row['fileName']}.wav", seed=i)
    return root, voice


def test_votes_match_the_table(crema_root: tuple[Path, list[dict]]) -> None:
    root, voice = crema_root
    assert NO_AUDIO in {r["fileName"] for r in voice}
    records, report = read_crema_d(root)
    assert report.skipped == {NO_AUDIO: f"audio file missing: {root / 'AudioWAV' / (NO_AUDIO + '.wav')}"}
    expected = {r["fileName"]: r for r in voice if r["fileName"] != NO_AUDIO}
    assert [r.id for r in records] == list(expected)  # voice rows only, table order
    for rec in records:
        row = expected[rec.id]
        counts = [float(row[c]) for c in ("A", "D", "F", "H", "N", "S")]
        np.testing.assert_array_equal(rec.votes["primary"], counts)
        assert rec.votes["primary"].sum() == float(row["numResponses"])
        assert rec.classes == ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad")
        assert rec.speaker == rec.id.split("_")[0]
        assert rec.transcript == SENTENCES[rec.id.split("_")[1]]
        assert rec.audio_path == root / "AudioWAV" / f"{rec.id}.wav"
        assert rec.audio_path.is_file()
        assert rec.vad is None
        assert rec.vad_scale is None
        assert rec.corpus == "crema-d"


def test_speaker_independent_split(crema_root: tuple[Path, list[dict]]) -> None:
    root, _ = crema_root
    records, _ = read_crema_d(root, seed=11)
    splits_of_actor: dict[str, set[str]] = {}
    for rec in records:
        splits_of_actor.setdefault(rec.speaker, set()).add(rec.split)
    assert all(len(s) == 1 for s in splits_of_actor.values())
    # 20 actors, 70/10/20 of the actors.
    assert Counter(next(iter(s)) for s in splits_of_actor.values()) == Counter({"train": 14, "val": 2, "test": 4})
    expected = group_split([r.id for r in records], [r.speaker for r in records], ratios=(0.7, 0.1, 0.2), seed=11)
    assert {r.id: r.split for r in records} == expected
    assert [r.split for r in read_crema_d(root, seed=11)[0]] == [r.split for r in records]


def test_transcripts_are_the_corpus_sentences() -> None:
    assert len(SENTENCES) == 12
    assert SENTENCES["IEO"] == "It's eleven o'clock"
    assert SENTENCES["WSI"] == "We'll stop in a couple of minutes"


def test_unknown_sentence_code_names_file_and_line(crema_root: tuple[Path, list[dict]]) -> None:
    root, voice = crema_root
    path = root / "processedResults" / "tabulatedVotes.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    name = voice[3]["fileName"]
    line_no = next(i for i, line in enumerate(lines, start=1) if f'"{name}"' in line)
    lines[line_no - 1] = lines[line_no - 1].replace(name, name.replace(name.split("_")[1], "XYZ"))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"tabulatedVotes.csv:{line_no}: unknown sentence code 'XYZ'"):
        read_crema_d(root)


def test_non_finite_or_undecodable_rows_name_file_and_line(crema_root: tuple[Path, list[dict]]) -> None:
    root, voice = crema_root
    path = root / "processedResults" / "tabulatedVotes.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    header = next(csv.reader([lines[0]]))
    line_no = next(i for i, line in enumerate(lines, start=1) if f'"{voice[2]["fileName"]}"' in line)
    row = next(csv.reader([lines[line_no - 1]]))
    # nan votes with a nan total passed the numResponses check (nan comparisons are False)
    row[header.index("A")] = row[header.index("numResponses")] = "nan"
    bad = [*lines[: line_no - 1], ",".join(row), *lines[line_no:]]
    path.write_text("\n".join(bad) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"tabulatedVotes.csv:{line_no}: vote counts must be finite"):
        read_crema_d(root)
    path.write_bytes(("\n".join(lines[:line_no]) + "\n").encode() + b'1,"caf\xe9"\n')
    with pytest.raises(ValueError, match=rf"tabulatedVotes.csv:{line_no + 1}: not utf-8 text"):
        read_crema_d(root)
