"""MSP-Podcast (release 2.x): per-rater votes from ``Labels/labels_detailed.csv``.

Files read under ``root``:
    * ``Labels/labels_consensus.csv``: ``FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set``
      (one row per utterance: which utterances exist, their speaker and official split).
    * ``Labels/labels_detailed.csv``: ``FileName, WorkerID, EmoClass_Major, EmoClass_Second, EmoAct, EmoVal,
      EmoDom`` (one row per rater). ``EmoClass_Second`` is a comma-separated list (``"Happy,Surprise"``).
    * ``Audios/<FileName>`` and ``Transcripts/<stem>.txt``.

Votes:
    * ``primary``: one vote per rater for ``EmoClass_Major``. A major outside the class set is counted in
      ``report.ignored_labels`` and skips the utterance (reason in ``report.skipped``), unless
      ``drop_out_of_set_votes``: then the vote is left out and counted in ``report.dropped_votes`` (the
      usual 8-class protocol, ``msp8`` without Other, needs it). An utterance with no primary vote inside
      the set is skipped with a reason either way.
    * ``merged``: ``primary + secondary_weight x secondary``, the merged primary+secondary distribution of
      the entropy-aware curriculum paper (MSP-Podcast 2.0, 9 classes incl. Other). Its text does not spell
      out the counting, so we follow the all-inclusive aggregation rule it builds on (Chou et al., 2024):
      every class a rater lists as secondary is one full vote, whatever the length of the list; a class
      listed twice by one rater (``"Angry,Anger"``) counts once; the secondary list is not compared with
      the rater's own primary. Secondary labels outside the class set are not counted and are tallied in
      ``report.notes["secondary_outside_class_set"]``.
    * Free-text "Other" labels (``Other-<text>``) count as ``Other`` when the class set has it
      (``msp9``); otherwise they are ignored and counted as ``Other``.

VAD: the mean over raters of ``EmoVal, EmoAct, EmoDom`` -> ``[valence, arousal, dominance]`` on 1-7 (the
consensus row's values when no rater gave one). Speaker: ``SpkrID``.

Release 1.x distributes per-rater labels in another layout (``labels_detailed.json``); it is not read
here: without ``labels_detailed.csv`` the reader stops and says that release 2.x labels are required.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ser_lightning.corpora.record import ReadReport, UtteranceRecord, out_of_set_reason, parse_errors
from ser_lightning.corpora.splits import fold_split
from ser_lightning.labels import ClassSet, get_class_set, merge_votes

CORPUS = "msp-podcast"
VAD_SCALE = (1.0, 7.0)
CONSENSUS_COLUMNS = ("FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
DETAILED_COLUMNS = ("FileName", "WorkerID", "EmoClass_Major", "EmoClass_Second", "EmoAct", "EmoVal", "EmoDom")
OFFICIAL_SPLITS = {
    "Train": "train",
    "Development": "val",
    "Validation": "val",
    "Test1": "test1",
    "Test2": "test2",
    "Test3": "test3",
}
VAD_COLUMNS = ("EmoVal", "EmoAct", "EmoDom")  # stored order: valence, arousal, dominance


@dataclass
class _Raters:
    """Per-rater labels of one utterance, accumulated from ``labels_detailed.csv``."""

    majors: list[str] = field(default_factory=list)
    seconds: list[list[str]] = field(default_factory=list)
    vad: list[list[float]] = field(default_factory=lambda: [[], [], []])


def _canonical(label: str) -> str:
    """Strip a label and fold ``Other-<free text>`` (any case) to ``Other``."""
    label = label.strip()
    if label.casefold() == "other" or label.casefold().startswith("other-"):
        return "Other"
    return label


def _columns(header: list[str], required: tuple[str, ...], path: Path) -> dict[str, int]:
    col = {h.strip(): i for i, h in enumerate(header)}
    missing = [c for c in required if c not in col]
    if missing:
        raise ValueError(f"{path}:1: missing column(s) {missing}; header is {header}")
    return col


def _csv_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, list[str], dict[str, int]]]:
    """``(line number, row, column index)`` of every non-blank row; a short row raises naming file and line."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        with parse_errors(path, lambda: reader.line_num):
            col = _columns(next(reader, []), required, path)
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) < len(col):
                    raise ValueError(f"{path}:{reader.line_num}: expected {len(col)} fields, got {len(row)}")
                yield reader.line_num, row, col


def _float_or_none(text: str, what: str, path: Path, line: int) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError as err:
        raise ValueError(f"{path}:{line}: {what} is not a number: {text!r}") from err


def _read_detailed(path: Path, notes: Counter[str]) -> dict[str, _Raters]:
    """Raters per utterance id (``FileName`` without its suffix)."""
    if not path.is_file():
        json_1x = path.with_suffix(".json")
        found = f" (found {json_1x.name}: a release 1.x layout)" if json_1x.is_file() else ""
        raise FileNotFoundError(
            f"{path} not found{found}; MSP-Podcast release 2.x per-rater labels (labels_detailed.csv with "
            f"columns {', '.join(DETAILED_COLUMNS)}) are required"
        )
    out: dict[str, _Raters] = {}
    for line, row, col in _csv_rows(path, DETAILED_COLUMNS):
        raters = out.setdefault(Path(row[col["FileName"]].strip()).stem, _Raters())
        major = row[col["EmoClass_Major"]].strip()
        if major:
            raters.majors.append(_canonical(major))
        else:
            notes["empty_primary"] += 1
        raters.seconds.append([_canonical(s) for s in row[col["EmoClass_Second"]].split(",") if s.strip()])
        for k, name in enumerate(VAD_COLUMNS):
            value = _float_or_none(row[col[name]], name, path, line)
            if value is None:
                notes["missing_vad_rating"] += 1
            else:
                raters.vad[k].append(value)
    return out


def _secondary_counts(raters: _Raters, class_set: ClassSet, notes: Counter[str]) -> np.ndarray:
    counts = np.zeros(class_set.num_classes)
    for listed in raters.seconds:
        chosen: set[int] = set()
        for label in listed:
            i = class_set.index(label)
            if i is None:
                notes["secondary_outside_class_set"] += 1
            else:
                chosen.add(i)
        for i in chosen:
            counts[i] += 1.0
    return counts


def _split_of(value: str, path: Path, line: int) -> str:
    split = OFFICIAL_SPLITS.get(value.strip())
    if split is None:
        raise ValueError(f"{path}:{line}: unknown Split_Set {value!r}; expected one of {sorted(OFFICIAL_SPLITS)}")
    return split


def _read_transcript(path: Path, notes: Counter[str]) -> str:
    if not path.is_file():
        notes["missing_transcript"] += 1
        return ""
    with parse_errors(path):
        return path.read_text(encoding="utf-8").strip()


def _consensus_vad(
    row: list[str], col: dict[str, int], path: Path, line: int, notes: Counter[str]
) -> list[float] | None:
    values = [_float_or_none(row[col[c]], c, path, line) for c in VAD_COLUMNS]
    if any(v is None for v in values):
        notes["missing_vad"] += 1
        return None
    return [float(v) for v in values if v is not None]


def _record(
    root: Path, name: str, raters: _Raters, class_set: ClassSet, secondary_weight: float, drop: bool, report: ReadReport
) -> UtteranceRecord | None:
    """The record of audio file ``name`` (split and speaker filled in by the caller), or ``None`` when skipped."""
    utt_id = Path(name).stem
    primary, unknown = class_set.map_labels(raters.majors)
    report.ignored_labels.update(unknown)
    primary_counts = np.bincount(primary, minlength=class_set.num_classes).astype(np.float64)
    if primary_counts.sum() <= 0:
        report.skipped[utt_id] = f"no primary vote inside class set {class_set.name} (majors: {sorted(unknown)})"
        return None
    if unknown and not drop:
        report.skipped[utt_id] = out_of_set_reason(class_set.name, dict(unknown))
        return None
    audio = root / "Audios" / name
    if not audio.is_file():
        report.skipped[utt_id] = f"audio file missing: {audio}"
        return None
    report.drop_votes(dict(unknown))
    secondary = _secondary_counts(raters, class_set, report.notes)
    vad = [float(np.mean(v)) for v in raters.vad] if all(raters.vad) else None
    return UtteranceRecord(
        id=utt_id,
        corpus=CORPUS,
        split="",
        audio_path=audio,
        transcript=_read_transcript(root / "Transcripts" / f"{utt_id}.txt", report.notes),
        speaker="",
        classes=class_set.classes,
        votes={"primary": primary_counts, "merged": merge_votes(primary_counts, secondary, secondary_weight)},
        vad=vad,
        vad_scale=None if vad is None else VAD_SCALE,
    )


def read_msp_podcast(
    root: str | Path,
    classes: str = "msp8",
    *,
    split: str = "official",
    folds: int = 5,
    fold: int = 0,
    seed: int = 0,
    secondary_weight: float = 1.0,
    drop_out_of_set_votes: bool = False,
) -> tuple[list[UtteranceRecord], ReadReport]:
    """Read MSP-Podcast 2.x per-rater votes (``primary`` and ``merged``), VAD, transcripts and audio paths.

    Args:
        root: the release root holding ``Labels/``, ``Audios/`` and ``Transcripts/``.
        classes: class set name (``"msp8"``, ``"msp9"``) or a ``"A,B,C"`` list.
        split: ``"official"`` (``Split_Set``: Train, Development/Validation, Test1-3) or ``"folds"``
            (``folds`` equal folds over all kept utterances, as AmbER² evaluates MSP-Podcast).
        folds: number of folds with ``split="folds"``.
        fold: the test fold with ``split="folds"`` (the next fold is val).
        seed: seed of the fold assignment.
        secondary_weight: weight of each secondary vote in ``merged``.
        drop_out_of_set_votes: keep an utterance with primary votes outside the class set, without them
            (counted in ``report.dropped_votes``); by default it is skipped with the reason in ``report.skipped``.

    Returns:
        The kept utterances in ``labels_consensus.csv`` order and the report of what was left out.
    """
    if split not in ("official", "folds"):
        raise ValueError(f"split must be 'official' or 'folds', got {split!r}")
    if secondary_weight < 0:
        raise ValueError(f"secondary_weight must be >= 0, got {secondary_weight}")
    root = Path(root)
    class_set = get_class_set(classes)
    report = ReadReport(out_of_set_votes="drop" if drop_out_of_set_votes else "reject")
    detailed = _read_detailed(root / "Labels" / "labels_detailed.csv", report.notes)
    consensus = root / "Labels" / "labels_consensus.csv"
    records: list[UtteranceRecord] = []
    seen: set[str] = set()
    for line, row, col in _csv_rows(consensus, CONSENSUS_COLUMNS):
        name = row[col["FileName"]].strip()
        utt_id = Path(name).stem
        if utt_id in seen:
            raise ValueError(f"{consensus}:{line}: FileName {name} appears twice")
        seen.add(utt_id)
        official = _split_of(row[col["Split_Set"]], consensus, line)
        raters = detailed.get(utt_id)
        if raters is None:
            report.skipped[utt_id] = "no per-rater row in labels_detailed.csv"
            continue
        record = _record(root, name, raters, class_set, secondary_weight, drop_out_of_set_votes, report)
        if record is not None:
            record.split = official
            record.speaker = row[col["SpkrID"]].strip()
            if record.vad is None:
                record.vad = _consensus_vad(row, col, consensus, line, report.notes)
                record.vad_scale = None if record.vad is None else VAD_SCALE
            records.append(record)
    missing = len(set(detailed) - seen)
    if missing:
        report.notes["detailed_without_consensus"] += missing
    if split == "folds":
        assignment = fold_split([r.id for r in records], folds=folds, fold=fold, seed=seed)
        for rec in records:
            rec.split = assignment[rec.id]
    return records, report
