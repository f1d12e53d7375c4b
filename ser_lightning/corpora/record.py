"""The utterance record every corpus reader yields and the report of what it left out."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLIT_NAMES = ("train", "val", "test", "test1", "test2", "test3")


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


@dataclass
class ReadReport:
    """What a reader skipped or ignored, so nothing is dropped silently.

    Attributes:
        skipped: utterance id -> reason, for utterances not yielded (filtered, no votes, bad line).
        ignored_labels: label strings outside the class set that were not counted.
        notes: other counted events (e.g. ``secondary_outside_class_set``).
    """

    skipped: dict[str, str] = field(default_factory=dict)
    ignored_labels: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)
