"""The utterance record every corpus reader yields and the report of what it left out."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLIT_NAMES = ("train", "val", "test", "test1", "test2", "test3")
OUT_OF_SET_POLICIES = ("reject", "drop")
OUT_OF_SET_HINT = "pass --drop-out-of-set-votes (drop_out_of_set_votes=True) to keep the row without them"


@dataclass
class UtteranceRecord:
    """One utterance of a corpus with its raw rater votes, before any audio is read.

    Attributes:
        id: corpus-unique utterance id (file stem).
        corpus: corpus name (``iemocap``, ``msp-podcast``, ``crema-d``, ``manifest`` ...).
        split: normalised split name, one of :data:`SPLIT_NAMES`.
        audio_path: original audio file.
        transcript: text of the utterance ("" when unknown).
        speaker: speaker id ("" when unknown).
        classes: class names the vote vectors are aligned with.
        votes: label source (``primary``, ``merged``, ...) -> vote counts aligned with ``classes``.
        vad: per-rater mean valence, arousal, dominance on the corpus's own scale, or ``None``.
        vad_scale: ``(low, high)`` of that scale, or ``None``.
        consensus: the corpus's own consensus label (a name in ``classes``), or ``None`` when it has none.
    """

    id: str
    corpus: str
    split: str
    audio_path: Path
    transcript: str
    speaker: str
    classes: tuple[str, ...]
    votes: dict[str, np.ndarray]
    vad: list[float] | None = None
    vad_scale: tuple[float, float] | None = None
    consensus: str | None = None


@dataclass
class ReadReport:
    """What a reader skipped or ignored, so nothing is dropped silently.

    Attributes:
        skipped: utterance id -> reason, for utterances not yielded (filtered, no votes, bad line).
        ignored_labels: label strings outside the class set that were not counted.
        notes: other counted events (e.g. ``secondary_outside_class_set``).
        out_of_set_votes: what the reader did with votes for classes outside the class set: ``"reject"``
            the utterance (reason in ``skipped``) or ``"drop"`` the votes (counted in ``dropped_votes``);
            ``None`` for readers whose votes cannot fall outside the set.
        dropped_votes: label -> vote mass removed from KEPT utterances because it is outside the class set.
        utterances_with_dropped_votes: number of kept utterances that lost votes that way.
        label_rules: label source -> the rule that built its votes (e.g. ``merged``:
            :func:`ser_lightning.labels.merged_rule`), recorded in the card's ``label_sources``.
    """

    skipped: dict[str, str] = field(default_factory=dict)
    ignored_labels: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)
    out_of_set_votes: str | None = None
    dropped_votes: Counter[str] = field(default_factory=Counter)
    utterances_with_dropped_votes: int = 0
    label_rules: dict[str, dict[str, object]] = field(default_factory=dict)

    def card(self) -> dict[str, object]:
        """The card's ``reader`` entry: what the reader counted without rejecting, kept with the data."""
        return {
            "skipped": len(self.skipped),
            "ignored_labels": dict(sorted(self.ignored_labels.items())),
            "notes": dict(sorted(self.notes.items())),
            "out_of_set_votes": self.out_of_set_votes,
            "dropped_votes": {k: float(v) for k, v in sorted(self.dropped_votes.items())},
            "utterances_with_dropped_votes": self.utterances_with_dropped_votes,
        }

    def drop_votes(self, outside: dict[str, float]) -> None:
        """Count the out-of-set vote mass of one kept utterance."""
        if outside:
            self.dropped_votes.update({k: float(v) for k, v in outside.items()})
            self.utterances_with_dropped_votes += 1


def out_of_set_reason(class_set_name: str, outside: dict[str, float]) -> str:
    """The rejection reason of an utterance with votes outside the class set (label=count, largest first)."""
    listed = ", ".join(f"{k}={v:g}" for k, v in sorted(outside.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"votes outside class set {class_set_name}: {listed} ({OUT_OF_SET_HINT})"


def _first_undecodable_line(path: Path, encoding: str) -> int | str:
    """Line number of the first line of ``path`` that does not decode (text is decoded in chunks, ahead of lines)."""
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except OSError:
        return "?"
    for number, raw in enumerate(lines, start=1):
        try:
            raw.decode(encoding)
        except UnicodeDecodeError:
            return number
    return "?"


@contextmanager
def parse_errors(path: Path, line: Callable[[], int | str] = lambda: "?", encoding: str = "utf-8") -> Iterator[None]:
    """Re-raise undecodable text and malformed CSV as a ``ValueError`` naming ``path:line`` (bare ones name no file).

    Args:
        path: the file being read.
        line: the current line number, for CSV errors (e.g. ``lambda: reader.line_num``).
        encoding: the file's encoding, to find the first undecodable line.
    """
    try:
        yield
    except UnicodeDecodeError as err:
        line_no = _first_undecodable_line(path, encoding)
        raise ValueError(f"{path}:{line_no}: not {encoding} text ({err.reason})") from err
    except csv.Error as err:
        raise ValueError(f"{path}:{line()}: malformed CSV ({err})") from err
