"""MSP-Podcast (release 2.x): per-rater votes from ``Labels/labels_detailed.csv``.

Files read under ``root``:
    * ``Labels/labels_consensus.csv``: ``FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set``
      (one row per utterance: which utterances exist, their speaker and official split).
    * ``Labels/labels_detailed.csv``: ``FileName, WorkerID, EmoClass_Major, EmoClass_Second, EmoAct, EmoVal,
      EmoDom`` (one row per rater). ``EmoClass_Second`` is a comma-separated list (``"Happy,Surprise"``).
    * ``Audios/<FileName>`` and ``Transcripts/<stem>.txt``.

Votes (``primary`` and ``merged``); rater labels are mapped onto the class set with the entropy-curriculum
authors' canonical map first (:data:`CANONICAL_NAMES`: frustrated/annoyed -> Angry, excited/amused -> Happy,
disappointed/concerned/depressed -> Sad, ...), then the class set's names and aliases:
    * ``primary``: one vote per rater for ``EmoClass_Major`` (``Other-<text>`` counts as ``Other``). In a class
      set with ``Other`` (``msp9``) a name outside the set counts as ``Other`` (counted in
      ``report.notes["primary_unknown_to_other"]``), as the authors map it. Otherwise it is counted in
      ``report.ignored_labels`` and skips the utterance (reason in ``report.skipped``), unless
      ``drop_out_of_set_votes``: then the vote is left out and counted in ``report.dropped_votes`` (the
      usual 8-class protocol, ``msp8`` without Other, needs it). An utterance with no primary vote inside
      the set is skipped with a reason either way.
    * ``merged``: the authors' rule (``prepare_msp_podcast.py``, ``parse_labels_txt`` + ``_merge_dist``): each
      rater's secondary list, mapped, deduplicated and without names outside the class set (counted in
      ``report.notes["secondary_outside_class_set"]``), shares ONE vote, 1/len per class; S = the normalised
      sum over raters, P = the normalised primary counts, merged = normalise(w_p P + w_s S) (w_p 0.95, w_s 0.05
      by default; ``merged = P`` when no rater gave a secondary in the set). ``Other-<text>`` secondaries are
      ``Other`` with ``msp9`` and ``<text>``'s class otherwise (their ``_split_secondary_list``). The stored
      ``merged`` votes are effective votes: the merged distribution times the number of primary votes, so
      their total is the rater count, as in ``primary``. The rule and weights go to ``report.label_rules``
      and from there to the card (``label_sources.merged.rule``).

Consensus: ``EmoClass`` of ``labels_consensus.csv`` (``record.consensus``), a class name or ``None``: the
no-agreement code ``X`` is ``Other`` in a set with it (``msp9``) and ``None`` otherwise (``msp8``), as is a
code outside the class set (counted in ``report.notes``).

VAD: the mean over raters of ``EmoVal, EmoAct, EmoDom`` -> ``[valence, arousal, dominance]`` on 1-7 (the
consensus row's values when no rater gave one). Speaker: ``SpkrID``.

Release 1.x distributes per-rater labels in another layout (``labels_detailed.json``); it is not read
here: without ``labels_detailed.csv`` the reader stops and says that release 2.x labels are required.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ser_lightning.corpora.record import ReadReport, UtteranceRecord, out_of_set_reason, parse_errors
from ser_lightning.corpora.splits import fold_split
from ser_lightning.labels import ClassSet, get_class_set, merged_rule, weighted_merge

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
MERGED_WEIGHTS = (0.95, 0.05)  # (w_p, w_s): the authors' prepare_msp_podcast.py argparse defaults
OTHER = "Other"
NO_AGREEMENT = ("x", "noagree", "no-agree", "no_agree", "no agreement", "no-agreement", "no_agreement")
# Omidi et al., prepare_msp_podcast.py: _EMOTION_CANONICAL_MAP, here onto the msp class names (casefolded keys)
CANONICAL_NAMES = {
    **dict.fromkeys(("neutral", "neu", "neut", "n"), "Neutral"),
    **dict.fromkeys(("happy", "happiness", "joy", "elated", "hap", "h", "excited", "amused"), "Happy"),
    **dict.fromkeys(("angry", "anger", "annoyed", "hostile", "frustrated", "frustration", "ang", "a"), "Angry"),
    **dict.fromkeys(("sad", "sadness", "depressed", "disappointed", "concerned", "s"), "Sad"),
    **dict.fromkeys(("fear", "afraid", "scared", "f"), "Fear"),
    **dict.fromkeys(("disgust", "disgusted", "revulsion", "d"), "Disgust"),
    **dict.fromkeys(("contempt", "scorn", "c"), "Contempt"),
    **dict.fromkeys(("surprise", "surprised", "u"), "Surprise"),
    **dict.fromkeys(("other", "oth", "o", *NO_AGREEMENT), OTHER),
}
_OTHER_PREFIX = re.compile(r"^other\s*[-_:]+\s*", re.IGNORECASE)  # "Other-Curious", "other: bored"


@dataclass
class _Raters:
    """Per-rater labels of one utterance, accumulated from ``labels_detailed.csv``."""

    majors: list[str] = field(default_factory=list)
    seconds: list[list[str]] = field(default_factory=list)
    vad: list[list[float]] = field(default_factory=lambda: [[], [], []])


def _canonical(label: str) -> str:
    """Strip a label and fold ``Other-<free text>`` (any case; ``-``, ``_`` or ``:``) to ``Other``."""
    label = label.strip()
    if label.casefold() == "other" or _OTHER_PREFIX.match(label):
        return OTHER
    return label


def _class_index(label: str, class_set: ClassSet) -> int | None:
    """Class index of a rater's label through the authors' canonical map, then the class set's names and aliases."""
    text = " ".join(label.split())
    return class_set.index(CANONICAL_NAMES.get(text.casefold(), text))


def _secondary_index(label: str, class_set: ClassSet) -> int | None:
    """A secondary label's class: ``Other-<text>`` is Other in a set with it, else ``<text>``'s class.

    Omidi et al., ``prepare_msp_podcast.py``: ``_split_secondary_list`` (the ``other-X`` branch).
    """
    match = _OTHER_PREFIX.match(label.strip())
    if match is not None:
        other = class_set.index(OTHER)
        return other if other is not None else _class_index(label.strip()[match.end() :], class_set)
    return _class_index(label, class_set)


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
        raters.seconds.append([s.strip() for s in row[col["EmoClass_Second"]].split(",") if s.strip()])
        for k, name in enumerate(VAD_COLUMNS):
            value = _float_or_none(row[col[name]], name, path, line)
            if value is None:
                notes["missing_vad_rating"] += 1
            else:
                raters.vad[k].append(value)
    return out


def _primary_counts(majors: list[str], class_set: ClassSet, notes: Counter[str]) -> tuple[np.ndarray, Counter[str]]:
    """Primary vote counts and the labels outside the class set (none with ``Other``: they count as Other).

    Omidi et al., ``prepare_msp_podcast.py``: ``parse_labels_txt`` maps an unknown primary to ``other``.
    """
    counts = np.zeros(class_set.num_classes)
    unknown: Counter[str] = Counter()
    other = class_set.index(OTHER)
    for label in majors:
        i = _class_index(label, class_set)
        if i is None and other is not None:
            notes["primary_unknown_to_other"] += 1
            i = other
        if i is None:
            unknown[label] += 1
        else:
            counts[i] += 1.0
    return counts, unknown


def _secondary_shares(raters: _Raters, class_set: ClassSet, notes: Counter[str]) -> np.ndarray:
    """Per rater one vote shared 1/len by the distinct in-set secondary classes, summed over raters.

    Omidi et al., ``prepare_msp_podcast.py``: ``parse_labels_txt`` ("worker-balanced secondary counting").
    """
    shares = np.zeros(class_set.num_classes)
    for listed in raters.seconds:
        chosen: list[int] = []
        for label in listed:
            i = _secondary_index(label, class_set)
            if i is None:
                notes["secondary_outside_class_set"] += 1
            elif i not in chosen:
                chosen.append(i)
        for i in chosen:
            shares[i] += 1.0 / len(chosen)
    return shares


def _consensus_label(code: str, class_set: ClassSet, notes: Counter[str]) -> str | None:
    """``EmoClass`` of the consensus row as a class name: no-agreement ``X`` is Other, or ``None`` without it."""
    code = code.strip()
    if not code:
        return None
    if code.casefold() in NO_AGREEMENT:
        notes["consensus_no_agreement"] += 1
    i = _class_index(code, class_set)
    if i is None:
        notes[f"consensus_outside_class_set:{code}"] += 1
        return None
    return class_set.classes[i]


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
    root: Path, name: str, raters: _Raters, class_set: ClassSet, weights: tuple[float, float], drop: bool,
    report: ReadReport,
) -> UtteranceRecord | None:
    """The record of audio file ``name`` (split, speaker, consensus filled in by the caller), or ``None``: skipped."""
    utt_id = Path(name).stem
    primary_counts, unknown = _primary_counts([_canonical(m) for m in raters.majors], class_set, report.notes)
    report.ignored_labels.update(unknown)
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
    merged = weighted_merge(primary_counts, _secondary_shares(raters, class_set, report.notes), *weights)
    vad = [float(np.mean(v)) for v in raters.vad] if all(raters.vad) else None
    return UtteranceRecord(
        id=utt_id,
        corpus=CORPUS,
        split="",
        audio_path=audio,
        transcript=_read_transcript(root / "Transcripts" / f"{utt_id}.txt", report.notes),
        speaker="",
        classes=class_set.classes,
        # merged as effective votes: its distribution times the primary vote count (the rater total)
        votes={"primary": primary_counts, "merged": merged * primary_counts.sum()},
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
    merged_weights: tuple[float, float] = MERGED_WEIGHTS,
    drop_out_of_set_votes: bool = False,
) -> tuple[list[UtteranceRecord], ReadReport]:
    """Read MSP-Podcast 2.x per-rater votes (``primary``, ``merged``), consensus, VAD, transcripts and audio paths.

    Args:
        root: the release root holding ``Labels/``, ``Audios/`` and ``Transcripts/``.
        classes: class set name (``"msp8"``, ``"msp9"``) or a ``"A,B,C"`` list.
        split: ``"official"`` (``Split_Set``: Train, Development/Validation, Test1-3) or ``"folds"``
            (``folds`` equal folds over all kept utterances, as AmbER² evaluates MSP-Podcast).
        folds: number of folds with ``split="folds"``.
        fold: the test fold with ``split="folds"`` (the next fold is val).
        seed: seed of the fold assignment.
        merged_weights: ``(w_p, w_s)`` of ``merged = normalise(w_p P + w_s S)`` (see the module docstring).
        drop_out_of_set_votes: keep an utterance with primary votes outside the class set, without them
            (counted in ``report.dropped_votes``); by default it is skipped with the reason in ``report.skipped``.

    Returns:
        The kept utterances in ``labels_consensus.csv`` order and the report of what was left out.
    """
    if split not in ("official", "folds"):
        raise ValueError(f"split must be 'official' or 'folds', got {split!r}")
    weights = (float(merged_weights[0]), float(merged_weights[1]))
    rule = merged_rule(*weights)  # checks the weights
    root = Path(root)
    class_set = get_class_set(classes)
    report = ReadReport(out_of_set_votes="drop" if drop_out_of_set_votes else "reject", label_rules={"merged": rule})
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
        record = _record(root, name, raters, class_set, weights, drop_out_of_set_votes, report)
        if record is not None:
            record.split = official
            record.speaker = row[col["SpkrID"]].strip()
            record.consensus = _consensus_label(row[col["EmoClass"]], class_set, report.notes)
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
