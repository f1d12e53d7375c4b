"""CREMA-D: the crowd-sourced vote table (`processedResults/tabulatedVotes.csv`) and the corpus reader.

:func:`read_crema_d` yields one record per voice-only row (``queryType`` 1: raters heard the audio
alone) with audio ``AudioWAV/<fileName>.wav``, the transcript of the sentence code, the actor as speaker,
and a speaker-independent split by actor. A row whose WAV is absent (the corpus README lists
``1076_MTI_SAD_XX``) is skipped with the reason in the report.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ser_lightning.corpora.record import ReadReport, UtteranceRecord, parse_errors
from ser_lightning.corpora.splits import group_split
from ser_lightning.labels import get_class_set

VOTE_COLUMNS = ("A", "D", "F", "H", "N", "S")  # Anger, Disgust, Fear, Happy, Neutral, Sad (class set cremad6)
MODALITY_PREFIX = {"voice": 1, "face": 2, "av": 3}  # row id = 100000 * queryType + clipNum
CORPUS = "crema-d"
# The 12 sentences of CREMA-D (corpus README): sentence code in the file name -> text spoken.
SENTENCES = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}


def is_tabulated_votes(header: list[str]) -> bool:
    """Whether a CSV header is CREMA-D's ``tabulatedVotes.csv`` header."""
    names = [h.strip() for h in header]
    return bool(names) and names[0] == "" and all(c in names for c in (*VOTE_COLUMNS, "fileName", "numResponses"))


@dataclass
class VoteTable:
    """Rows of a CREMA-D vote table for one modality.

    Attributes:
        row_ids: the table's first column (100000 x modality + clip number).
        file_names: ``ActorID_Sentence_Emotion_Level`` per row.
        counts: rows x 6 vote counts in the order of :data:`VOTE_COLUMNS`.
    """

    row_ids: list[int]
    file_names: list[str]
    counts: np.ndarray


def read_tabulated_votes(path: str | Path, modality: str = "voice") -> VoteTable:
    """Read the vote counts of one modality (``voice``, ``face`` or ``av``) from ``tabulatedVotes.csv``.

    A malformed row raises a ``ValueError`` naming the file and line; a row whose ``numResponses``
    disagrees with its counts does too, since the table would then be corrupt.
    """
    if modality not in MODALITY_PREFIX:
        raise ValueError(f"modality must be one of {sorted(MODALITY_PREFIX)}, got {modality!r}")
    path = Path(path)
    prefix = MODALITY_PREFIX[modality]
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        with parse_errors(path, lambda: reader.line_num):
            return _read_vote_rows(path, reader, prefix)


def _read_vote_rows(path: Path, reader: Any, prefix: int) -> VoteTable:
    """The rows of one modality (``prefix``) from an open ``csv.reader``."""
    row_ids: list[int] = []
    names: list[str] = []
    counts: list[list[float]] = []
    header = next(reader, [])
    if not is_tabulated_votes(header):
        raise ValueError(f"{path}:1: not a CREMA-D tabulatedVotes.csv header: {header[:9]}")
    col = {h.strip(): i for i, h in enumerate(header)}
    for row in reader:
        line = reader.line_num
        if not row:
            continue
        try:
            row_id = int(row[0])
            votes = [float(row[col[c]]) for c in VOTE_COLUMNS]
            total = float(row[col["numResponses"]])
            name = row[col["fileName"]]
        except (ValueError, IndexError) as err:
            raise ValueError(f"{path}:{line}: malformed row ({err})") from err
        if row_id // 100000 != prefix:
            continue
        if not all(np.isfinite(v) and v >= 0 for v in (*votes, total)):
            raise ValueError(f"{path}:{line}: vote counts must be finite and non-negative, got {votes} / {total:g}")
        if abs(sum(votes) - total) > 1e-6:
            raise ValueError(f"{path}:{line}: numResponses {total:g} != sum of votes {sum(votes):g}")
        row_ids.append(row_id)
        names.append(name)
        counts.append(votes)
    return VoteTable(row_ids, names, np.asarray(counts, dtype=np.float64).reshape(-1, len(VOTE_COLUMNS)))


def _line_of_row(path: Path, row_id: int) -> int | str:
    """Line of ``tabulatedVotes.csv`` holding ``row_id`` (only looked up to name a bad row in an error)."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        for row in reader:
            if row and row[0].strip() == str(row_id):
                return reader.line_num
    return "?"


def _parse_file_name(name: str, path: Path, row_id: int) -> tuple[str, str]:
    """Actor id and transcript of ``ActorID_Sentence_Emotion_Level``; a malformed name raises with file:line."""
    parts = name.split("_")
    if len(parts) != 4 or not parts[0].isdigit():
        raise ValueError(
            f"{path}:{_line_of_row(path, row_id)}: fileName {name!r} is not ActorID_Sentence_Emotion_Level"
        )
    if parts[1] not in SENTENCES:
        raise ValueError(f"{path}:{_line_of_row(path, row_id)}: unknown sentence code {parts[1]!r} in {name!r}")
    return parts[0], SENTENCES[parts[1]]


def read_crema_d(
    root: str | Path,
    *,
    seed: int = 0,
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2),
    modality: str = "voice",
) -> tuple[list[UtteranceRecord], ReadReport]:
    """Read CREMA-D's crowd votes (class set ``cremad6``, source ``primary``) with a split by actor.

    Args:
        root: the corpus root holding ``processedResults/tabulatedVotes.csv`` and ``AudioWAV/``.
        seed: seed of the actor split.
        ratios: fractions of actors for (train, val, test); 70/10/20 by default.
        modality: which raters' votes to read: ``"voice"`` (audio only, the SER setting), ``"face"`` or ``"av"``.

    Returns:
        The kept clips in table order and the report of what was left out.
    """
    root = Path(root)
    path = root / "processedResults" / "tabulatedVotes.csv"
    table = read_tabulated_votes(path, modality)
    class_set = get_class_set("cremad6")
    order = [class_set.index(c) for c in VOTE_COLUMNS]
    if order != list(range(class_set.num_classes)):
        raise RuntimeError(f"vote columns {VOTE_COLUMNS} do not follow class set {class_set.classes}")
    report = ReadReport()
    records: list[UtteranceRecord] = []
    seen: set[str] = set()
    for row_id, name, counts in zip(table.row_ids, table.file_names, table.counts, strict=True):
        if name in seen:
            raise ValueError(f"{path}:{_line_of_row(path, row_id)}: fileName {name} appears twice for {modality}")
        seen.add(name)
        actor, transcript = _parse_file_name(name, path, row_id)
        if counts.sum() <= 0:
            report.skipped[name] = "no votes"
            continue
        audio = root / "AudioWAV" / f"{name}.wav"
        if not audio.is_file():
            report.skipped[name] = f"audio file missing: {audio}"
            continue
        records.append(
            UtteranceRecord(
                id=name,
                corpus=CORPUS,
                split="",
                audio_path=audio,
                transcript=transcript,
                speaker=actor,
                classes=class_set.classes,
                votes={"primary": counts.copy()},
            )
        )
    assignment = group_split([r.id for r in records], [r.speaker for r in records], ratios=ratios, seed=seed)
    for rec in records:
        rec.split = assignment[rec.id]
    return records, report
