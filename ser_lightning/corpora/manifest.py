"""A corpus described by a manifest: CSV or JSON Lines (chosen by the file suffix), one utterance per row.

Fields (CSV columns or JSON keys):
    * ``audio`` (required): audio path, relative to ``root`` or, without ``root``, to the manifest's folder.
    * ``id``: utterance id (default: the audio file's stem); ``transcript``; ``speaker``.
    * Votes, one of:
        - CSV: one vote-count column per class, named like the class (case-insensitive; all classes needed);
          JSONL: ``votes`` as a ``{class: count}`` dict (class names or corpus aliases) or a list aligned
          with the classes.
        - ``labels``: one label per rater (CSV: ``;``-separated; JSONL: a list whose entries may themselves be
          lists of tags, one vote split equally over them).
    * Votes outside the class set — rater labels or ``votes`` keys that are not classes, and CSV columns named
      like an emotion (:data:`EMOTION_WORDS`, any class or alias of a registered class set) that is not in
      the class set — reject the row (reason in ``rejected.jsonl``) unless ``drop_out_of_set_votes``: then
      they are left out and counted in ``report.dropped_votes``. Both count them in ``report.ignored_labels``.
      Other unknown CSV columns are counted as ``unused_column:<name>`` notes (warned by ``ser-prepare``).
    * ``valence``, ``arousal``, ``dominance``: all three or none; ``vad_scale`` as ``"lo,hi"`` (or ``[lo, hi]``).
    * ``split``: with ``split="given"``, one of ``train, val, test, test1, test2, test3`` (``dev``,
      ``valid``, ``validation`` mean ``val``).

Errors name the manifest and line (also for undecodable text and malformed CSV). A row whose audio file does
not exist, or whose votes are outside the class set, is skipped with the reason in the report. The records'
source is ``primary``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ser_lightning.corpora.record import SPLIT_NAMES, ReadReport, UtteranceRecord, out_of_set_reason, parse_errors
from ser_lightning.corpora.splits import normalise_split, random_split
from ser_lightning.labels import CLASS_SETS, ClassSet, get_class_set

CORPUS = "manifest"
KNOWN_FIELDS = (
    "audio",
    "id",
    "transcript",
    "speaker",
    "split",
    "votes",
    "labels",
    "valence",
    "arousal",
    "dominance",
    "vad_scale",
)
VAD_FIELDS = ("valence", "arousal", "dominance")
OUTSIDE = "outside_votes"  # internal field: CSV vote columns of classes outside the class set
# Column names taken for emotion vote columns (case-insensitive) besides the class set's own classes.
EMOTION_WORDS = frozenset(
    w.casefold()
    for w in (
        *(c for cs in CLASS_SETS.values() for c in cs.classes),
        *(a for cs in CLASS_SETS.values() for a in cs.aliases if len(a) > 3),
        *("Surprise", "Surprised", "Fear", "Fearful", "Disgust", "Disgusted", "Contempt", "Other", "Calm"),
        *("Frustration", "Frustrated", "Excited", "Excitement", "Boredom", "Bored", "Anxiety", "Anxious"),
        *("Amused", "Amusement", "Annoyed", "Concerned", "Confused", "Disappointed", "Joy", "Love", "Shame"),
    )
)


class _RowError(ValueError):
    """A problem with one manifest row; the caller prefixes file and line."""


def _csv_rows(path: Path, class_set: ClassSet, report: ReadReport) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        with parse_errors(path, lambda: reader.line_num):
            yield from _csv_fields(path, reader, class_set, report)


def _csv_fields(path: Path, reader: Any, class_set: ClassSet, report: ReadReport) -> Iterator[tuple[int, dict]]:
    """``(line, fields)`` of each non-blank row; class columns become ``votes``, outside ones ``outside_votes``."""
    header = [h.strip() for h in next(reader, [])]
    if "audio" not in header:
        raise ValueError(f"{path}:1: the manifest needs an 'audio' column; header is {header}")
    class_columns = {h: class_set.classes[i] for h in header if (i := _class_column(h, class_set)) is not None}
    if class_columns and len(set(class_columns.values())) != class_set.num_classes:
        missing = sorted(set(class_set.classes) - set(class_columns.values()))
        raise ValueError(f"{path}:1: vote-count columns for classes {missing} are missing")
    if class_columns and "labels" in header:
        raise ValueError(f"{path}:1: give either per-class vote columns or 'labels', not both")
    if not class_columns and "labels" not in header:
        raise ValueError(f"{path}:1: no votes: add a column per class {list(class_set.classes)} or 'labels'")
    unknown = [h for h in header if h not in KNOWN_FIELDS and h not in class_columns]
    outside = [h for h in unknown if h.casefold() in EMOTION_WORDS]  # vote columns of classes outside the set
    for h in unknown:
        if h not in outside:
            report.notes[f"unused_column:{h}"] += 1
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}:{reader.line_num}: expected {len(header)} fields, got {len(row)}")
        fields = {h: v.strip() for h, v in zip(header, row, strict=True) if v.strip() and h in KNOWN_FIELDS}
        if class_columns:
            fields["votes"] = {class_columns[h]: v for h, v in zip(header, row, strict=True) if h in class_columns}
        if outside:
            fields[OUTSIDE] = {h: v.strip() for h, v in zip(header, row, strict=True) if h in outside and v.strip()}
        if "labels" in fields:
            fields["labels"] = [x.strip() for x in fields["labels"].split(";") if x.strip()]
        yield reader.line_num, fields


def _class_column(name: str, class_set: ClassSet) -> int | None:
    folded = name.casefold()
    return next((i for i, c in enumerate(class_set.classes) if c.casefold() == folded), None)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig") as f, parse_errors(path):
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: invalid JSON ({err.msg})") from err
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}")
            yield line_no, obj


def _number(value: Any, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError) as err:
        raise _RowError(f"{what} is not a number: {value!r}") from err
    if not np.isfinite(out):
        raise _RowError(f"{what} is not finite: {value!r}")
    return out


def _votes(fields: dict[str, Any], class_set: ClassSet) -> tuple[np.ndarray, dict[str, float]]:
    """Vote counts inside the class set and the vote mass per label outside it."""
    if "votes" in fields and "labels" in fields:
        raise _RowError("give either 'votes' or 'labels', not both")
    outside: dict[str, float] = {}
    for label, value in fields.get(OUTSIDE, {}).items():
        if (n := _number(value, f"vote count of {label!r}")) < 0:
            raise _RowError(f"negative vote count of {label!r}: {value!r}")
        if n > 0:
            outside[label] = n
    if "labels" in fields:
        labels = fields["labels"]
        if not isinstance(labels, list) or not all(
            isinstance(e, str) or (isinstance(e, list) and all(isinstance(t, str) for t in e)) for e in labels
        ):
            raise _RowError(f"'labels' must be a list of rater labels (strings or lists of tags), got {labels!r}")
        counts, _ = class_set.count_votes(labels)
        for entry in labels:  # the share of each outside tag, as count_votes splits a rater's vote
            tags = [entry] if isinstance(entry, str) else entry
            for tag in tags:
                if class_set.index(tag) is None:
                    outside[tag.strip()] = outside.get(tag.strip(), 0.0) + 1.0 / len(tags)
        return counts, outside
    votes = fields.get("votes")
    if isinstance(votes, dict):
        counts = np.zeros(class_set.num_classes)
        for label, value in votes.items():
            n = _number(value, f"vote count of {label!r}")
            i = class_set.index(str(label))
            if i is None:
                if n < 0:
                    raise _RowError(f"negative vote count in {votes!r}")
                if n > 0:
                    outside[str(label).strip()] = outside.get(str(label).strip(), 0.0) + n
            else:
                counts[i] += n
    elif isinstance(votes, list):
        if len(votes) != class_set.num_classes:
            raise _RowError(f"'votes' lists {len(votes)} counts for {class_set.num_classes} classes")
        counts = np.asarray([_number(v, "vote count") for v in votes])
    else:
        raise _RowError("no votes: give 'votes' or 'labels'")
    if np.any(counts < 0):
        raise _RowError(f"negative vote count in {votes!r}")
    return counts, outside


def _vad(fields: dict[str, Any]) -> tuple[list[float] | None, tuple[float, float] | None]:
    given = [f for f in VAD_FIELDS if f in fields and fields[f] not in ("", None)]
    if not given:
        return None, None
    if len(given) != len(VAD_FIELDS):
        raise _RowError(f"give all of {VAD_FIELDS} or none; got only {given}")
    vad = [_number(fields[f], f) for f in VAD_FIELDS]
    scale = fields.get("vad_scale")
    if scale in ("", None):
        return vad, None
    parts = scale.split(",") if isinstance(scale, str) else scale
    if not isinstance(parts, Sequence) or len(parts) != 2:
        raise _RowError(f"vad_scale must be 'lo,hi', got {scale!r}")
    lo, hi = (_number(p, "vad_scale") for p in parts)
    if lo >= hi:
        raise _RowError(f"vad_scale low {lo:g} must be below high {hi:g}")
    return vad, (lo, hi)


def _audio_and_id(fields: dict[str, Any], base: Path) -> tuple[Path, str]:
    audio_field = fields.get("audio")
    if not isinstance(audio_field, str) or not audio_field.strip():
        raise _RowError("missing 'audio' path")
    audio = Path(audio_field.strip())
    audio = audio if audio.is_absolute() else base / audio
    return audio, str(fields.get("id") or audio.stem).strip()


def _record(
    fields: dict[str, Any], audio: Path, utt_id: str, class_set: ClassSet, given: bool, drop: bool, report: ReadReport
) -> UtteranceRecord | None:
    """The record of one row, or ``None`` when it is skipped (reason in ``report``)."""
    split = ""
    if given:
        written = str(fields.get("split") or "")
        if not written:
            raise _RowError("no 'split' given (add a split field or read with split='random')")
        split = normalise_split(written) or ""
        if not split:
            raise _RowError(f"split {written!r} is not one of {SPLIT_NAMES} (or dev/valid/validation)")
    counts, outside = _votes(fields, class_set)
    vad, vad_scale = _vad(fields)
    report.ignored_labels.update(outside)
    if outside and not drop:
        report.skipped[utt_id] = out_of_set_reason(class_set.name, outside)
        return None
    if counts.sum() <= 0:
        report.skipped[utt_id] = f"no vote inside the class set {class_set.name}"
        return None
    if not audio.is_file():
        report.skipped[utt_id] = f"audio file missing: {audio}"
        return None
    report.drop_votes(outside)
    return UtteranceRecord(
        id=utt_id,
        corpus=CORPUS,
        split=split,
        audio_path=audio,
        transcript=str(fields.get("transcript") or ""),
        speaker=str(fields.get("speaker") or ""),
        classes=class_set.classes,
        votes={"primary": counts},
        vad=vad,
        vad_scale=vad_scale,
    )


def read_manifest(
    path: str | Path,
    classes: str | Sequence[str],
    *,
    root: str | Path | None = None,
    split: str = "given",
    seed: int = 0,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    drop_out_of_set_votes: bool = False,
) -> tuple[list[UtteranceRecord], ReadReport]:
    """Read a CSV (``.csv``) or JSON Lines (``.jsonl``/``.ndjson``) manifest of utterances with rater votes.

    Args:
        path: the manifest file.
        classes: class set name (``"iemocap4"``...), ``"A,B,C"`` or a list of class names.
        root: folder that relative audio paths start from; the manifest's folder by default.
        split: ``"given"`` (the ``split`` field of each row) or ``"random"`` (seeded by id).
        seed: seed of the random split.
        ratios: (train, val, test) fractions of the random split.
        drop_out_of_set_votes: keep a row with votes outside the class set, without those votes (counted in
            ``report.dropped_votes``); by default such a row is skipped with the reason in ``report.skipped``.

    Returns:
        The kept utterances in manifest order and the report of what was left out.
    """
    if split not in ("given", "random"):
        raise ValueError(f"split must be 'given' or 'random', got {split!r}")
    path = Path(path)
    class_set = get_class_set(classes)
    base = Path(root) if root is not None else path.parent
    report = ReadReport(out_of_set_votes="drop" if drop_out_of_set_votes else "reject")
    suffix = path.suffix.casefold()
    if suffix == ".csv":
        rows = _csv_rows(path, class_set, report)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(path)
    else:
        raise ValueError(f"{path}: manifest must end in .csv, .jsonl or .ndjson")
    records: list[UtteranceRecord] = []
    seen: dict[str, int] = {}
    for line, fields in rows:
        try:
            audio, utt_id = _audio_and_id(fields, base)
            if utt_id in seen:
                raise _RowError(f"id {utt_id!r} already used on line {seen[utt_id]}")
            seen[utt_id] = line
            record = _record(fields, audio, utt_id, class_set, split == "given", drop_out_of_set_votes, report)
        except _RowError as err:
            raise ValueError(f"{path}:{line}: {err}") from err
        if record is not None:
            records.append(record)
    if split == "random":
        assignment = random_split([r.id for r in records], ratios=ratios, seed=seed)
        for rec in records:
            rec.split = assignment[rec.id]
    return records, report
