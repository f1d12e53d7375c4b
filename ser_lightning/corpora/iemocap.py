"""IEMOCAP: rater votes from the original release layout (``SessionN/dialog/EmoEvaluation/*.txt``).

Each evaluation file holds one block per turn, blocks separated by blank lines, after a ``%`` header::

    [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]
    C-E2:<TAB>Neutral state;<TAB>()
    C-E3:<TAB>Frustration; Anger;<TAB>(angry and annoyed; raised voice)
    C-F1:<TAB>Neutral state;<TAB>(curious)
    A-E3:<TAB>val 3; act 2; dom  2;<TAB>()
    A-F1:<TAB>val 3; act 2; dom  1;<TAB>()

Votes:
    * ``C-E<n>`` lines are the external evaluators; ``C-F<n>``/``C-M<n>`` are the actors' self-assessments,
      left out unless ``self_ratings=True`` (the same holds for the dimensional ``A-F``/``A-M`` lines).
    * An evaluator line with several ``;``-separated tags is ONE vote split equally over its tags
      (``Frustration; Anger;`` -> 0.5 Frustration + 0.5 Anger). The parenthesised comment after the
      tags is free text (spaces and ``;`` allowed) and is not read.
    * ``classes="iemocap4"``: Anger, Happiness, Neutral, Sadness (corpus tags Anger, Happiness, Neutral
      state, Sadness). An utterance is kept only if every tag of every evaluator is one of them; any other
      tag drops it, with the reason in ``report.skipped`` — unless ``drop_out_of_set_votes``: then the
      outside tags' shares are left out and counted in ``report.dropped_votes``.
    * ``classes="iemocap4x"``: the same four classes with Excited counted as Happiness. An utterance is
      kept when the plurality class over all tags (ties toward the first class of the set, so a tie with
      an outside tag keeps the utterance) is one of the four; the votes are then restricted to the four
      classes and the outside tags counted in ``report.ignored_labels``. The stored counts are the
      restricted counts (not rescaled); :func:`ser_lightning.labels.votes_to_distribution` renormalises them.
      This rule drops votes by definition: the dropped shares are counted in ``report.dropped_votes``.
    * Any other class set name (or ``"A,B,C"`` list) applies the ``iemocap4`` rule: every tag must map.

VAD: the mean of the dimensional lines ``val``, ``act``, ``dom`` -> ``[valence, arousal, dominance]`` on
the 1-5 scale; when a turn has no dimensional line, the summary line's ``[V, A, D]`` is used.
Transcripts come from ``SessionN/dialog/transcriptions/<dialog>.txt``, audio from
``SessionN/sentences/wav/<dialog>/<turn>.wav``; the speaker is the session plus the gender letter of
the turn (``Ses01F_impro01_F000`` -> ``Ses01_F``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ser_lightning.corpora.record import ReadReport, UtteranceRecord, out_of_set_reason, parse_errors
from ser_lightning.corpora.splits import random_split
from ser_lightning.labels import ClassSet, get_class_set

CORPUS = "iemocap"
NUM_SESSIONS = 5
VAD_SCALE = (1.0, 5.0)
IEMOCAP4X = ClassSet(
    "iemocap4x",
    ("Anger", "Happiness", "Neutral", "Sadness"),
    {"Neutral state": "Neutral", "Excited": "Happiness", "ang": "Anger", "hap": "Happiness", "exc": "Happiness"},
)

_SUMMARY = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(\S+)\s+(\S+)\s+\[([^\]]*)\]\s*$")
_RATING = re.compile(r"^([CA])-([A-Z])(\d+):(.*)$")
_DIMENSION = {name: re.compile(rf"\b{name}\s+(\S+?)\s*(?:;|$)") for name in ("val", "act", "dom")}
_TRANSCRIPT = re.compile(r"^(Ses\d+[FM]_\S+)\s+\[[^\]]*\]:\s?(.*)$")
_SESSION_DIR = re.compile(r"^Session(\d+)$")


@dataclass
class _Turn:
    """One parsed block of an EmoEvaluation file."""

    id: str
    path: Path
    line: int
    summary_vad: list[float]
    tags: list[list[str]] = field(default_factory=list)  # one tag list per included evaluator
    dims: list[list[float]] = field(default_factory=list)  # one [val, act, dom] per included evaluator


def _is_self(rater: str) -> bool:
    return rater != "E"


def _parse_summary(match: re.Match[str], path: Path, line: int) -> _Turn:
    try:
        vad = [float(x) for x in match.group(5).split(",")]
    except ValueError as err:
        raise ValueError(f"{path}:{line}: malformed [V, A, D] in summary line ({err})") from err
    if len(vad) != 3:
        raise ValueError(f"{path}:{line}: summary line needs 3 values [V, A, D], got {len(vad)}")
    return _Turn(match.group(3), path, line, vad)


def _parse_dimensions(text: str, path: Path, line: int) -> list[float]:
    values = []
    for name, pattern in _DIMENSION.items():
        m = pattern.search(text)
        if m is None:
            raise ValueError(f"{path}:{line}: dimensional line lacks '{name} <value>': {text.strip()!r}")
        try:
            values.append(float(m.group(1)))
        except ValueError as err:
            raise ValueError(f"{path}:{line}: bad {name} value {m.group(1)!r}") from err
    return values


def _parse_evaluation_file(path: Path, self_ratings: bool, notes: Counter[str]) -> list[_Turn]:
    """Turns of one ``EmoEvaluation/*.txt`` file in file order; an unknown line raises naming file:line."""
    turns: list[_Turn] = []
    current: _Turn | None = None
    for line_no, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}:{line_no}: not UTF-8 text ({err.reason})") from err
        if not text.strip():
            current = None
            continue
        if text.startswith("%"):
            continue
        summary = _SUMMARY.match(text.strip())
        if summary is not None:
            current = _parse_summary(summary, path, line_no)
            turns.append(current)
            continue
        rating = _RATING.match(text.strip())
        if rating is None:
            raise ValueError(f"{path}:{line_no}: unrecognised line in evaluation file: {text!r}")
        if current is None:
            raise ValueError(f"{path}:{line_no}: rating line outside an utterance block: {text!r}")
        kind, rater, _, rest = rating.groups()
        if _is_self(rater) and not self_ratings:
            continue
        body = rest.split("(", 1)[0]  # tags or dimensions come before the free-text comment
        if kind == "A":
            current.dims.append(_parse_dimensions(body, path, line_no))
            continue
        tags = [t.strip() for t in body.split(";") if t.strip()]
        if not tags:
            notes["iemocap_empty_evaluator_line"] += 1
            continue
        current.tags.append(tags)
    return turns


def _tag_votes(tags: list[list[str]], class_set: ClassSet) -> tuple[np.ndarray, Counter[str], Counter[str]]:
    """Split-vote counts inside the class set, outside shares per tag, and outside tag occurrences."""
    counts = np.zeros(class_set.num_classes)
    outside_share: Counter[str] = Counter()
    outside_tags: Counter[str] = Counter()
    for entry in tags:
        share = 1.0 / len(entry)
        for tag in entry:
            i = class_set.index(tag)
            if i is None:
                outside_share[tag] += share
                outside_tags[tag] += 1
            else:
                counts[i] += share
    return counts, outside_share, outside_tags


def _votes_for(
    turn: _Turn, class_set: ClassSet, plurality_rule: bool, drop: bool, report: ReadReport
) -> tuple[np.ndarray, dict[str, float]] | None:
    """Votes of one turn and the shares it drops, or ``None`` (reason recorded) when the turn is skipped."""
    if not turn.tags:
        report.skipped[turn.id] = "no categorical evaluator line"
        return None
    counts, outside_share, outside_tags = _tag_votes(turn.tags, class_set)
    if not plurality_rule:
        if outside_tags and not drop:
            report.skipped[turn.id] = out_of_set_reason(class_set.name, dict(outside_share))
            return None
        if counts.sum() <= 0:
            report.skipped[turn.id] = f"no vote inside class set {class_set.name}: {sorted(outside_tags)}"
            return None
        report.ignored_labels.update(outside_tags)
        return counts, dict(outside_share)
    top_outside = max(outside_share.values(), default=0.0)
    if counts.max() <= 0 or counts.max() < top_outside - 1e-9:
        plural = max(outside_share, key=lambda t: outside_share[t])
        report.skipped[turn.id] = f"plurality tag {plural!r} is outside class set {class_set.name}"
        return None
    report.ignored_labels.update(outside_tags)
    return counts, dict(outside_share)


def _read_transcripts(session_dir: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted((session_dir / "dialog" / "transcriptions").glob("*.txt")):
        if path.name.startswith("."):
            continue
        with path.open(encoding="utf-8") as f, parse_errors(path):
            for line in f:
                m = _TRANSCRIPT.match(line.strip())
                if m is not None:
                    out[m.group(1)] = m.group(2).strip()
    return out


_UTTERANCE_SESSION = re.compile(r"^Ses(\d{2})[FM]_")


def session_from_id(utt_id: str) -> int | None:
    """The session number of an IEMOCAP utterance id (``Ses01F_impro01_F000`` -> 1), or ``None`` for other ids."""
    m = _UTTERANCE_SESSION.match(utt_id)
    return int(m.group(1)) if m else None


def _speaker(utt_id: str) -> str:
    return f"{utt_id[:5]}_{utt_id.rsplit('_', 1)[-1][:1]}"


def _sessions(root: Path) -> dict[int, Path]:
    found = {}
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        m = _SESSION_DIR.match(p.name)
        if m and (p / "dialog" / "EmoEvaluation").is_dir():
            found[int(m.group(1))] = p
    if not found:
        raise FileNotFoundError(f"{root}: no SessionN/dialog/EmoEvaluation folder; is this the IEMOCAP release root?")
    return found


def _session_splits(session_of: dict[str, int], test_session: int | None, val_session: int | None) -> dict[str, str]:
    if test_session is None:
        raise ValueError("split='session' needs test_session (1-5)")
    if not 1 <= test_session <= NUM_SESSIONS:
        raise ValueError(f"test_session must be in 1..{NUM_SESSIONS}, got {test_session}")
    val_session = test_session % NUM_SESSIONS + 1 if val_session is None else val_session
    if not 1 <= val_session <= NUM_SESSIONS or val_session == test_session:
        raise ValueError(f"val_session must be in 1..{NUM_SESSIONS} and differ from {test_session}, got {val_session}")
    present = set(session_of.values())
    for name, s in (("test_session", test_session), ("val_session", val_session)):
        if s not in present:
            raise ValueError(f"{name}={s}: no kept utterance of Session{s} (sessions read: {sorted(present)})")
    return {u: "test" if s == test_session else "val" if s == val_session else "train" for u, s in session_of.items()}


def read_iemocap(
    root: str | Path,
    classes: str = "iemocap4",
    *,
    self_ratings: bool = False,
    split: str = "random",
    seed: int = 0,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    test_session: int | None = None,
    val_session: int | None = None,
    drop_out_of_set_votes: bool = False,
) -> tuple[list[UtteranceRecord], ReadReport]:
    """Read IEMOCAP's evaluator votes, VAD, transcripts and audio paths from the original release.

    Args:
        root: the release root holding ``Session1`` ... ``Session5``.
        classes: ``"iemocap4"``, ``"iemocap4x"`` (Excited -> Happiness, plurality rule) or another class set.
        self_ratings: also count the actors' self-assessments as votes (and their dimensional ratings).
        split: ``"random"`` (seeded by utterance) or ``"session"`` (leave-one-session-out).
        seed: seed of the random split.
        ratios: (train, val, test) fractions of the random split.
        test_session: session number used as test with ``split="session"``.
        val_session: session used as val; by default the next one (5 -> 1).
        drop_out_of_set_votes: with the every-tag rule, keep a turn with tags outside the class set, without
            them (counted in ``report.dropped_votes``) instead of skipping it. ``iemocap4x`` always drops.

    Returns:
        The kept utterances (sorted by session, file, position) and the report of what was left out.
    """
    if split not in ("random", "session"):
        raise ValueError(f"split must be 'random' or 'session', got {split!r}")
    root = Path(root)
    plurality_rule = classes == "iemocap4x"
    class_set = IEMOCAP4X if plurality_rule else get_class_set(classes)
    report = ReadReport(out_of_set_votes="drop" if plurality_rule or drop_out_of_set_votes else "reject")
    records: list[UtteranceRecord] = []
    session_of: dict[str, int] = {}
    seen: dict[str, str] = {}
    for session, session_dir in _sessions(root).items():
        transcripts = _read_transcripts(session_dir)
        for path in sorted((session_dir / "dialog" / "EmoEvaluation").glob("*.txt")):
            if path.name.startswith("."):
                report.notes["iemocap_hidden_file"] += 1
                continue
            for turn in _parse_evaluation_file(path, self_ratings, report.notes):
                if turn.id in seen:
                    raise ValueError(f"{path}:{turn.line}: utterance {turn.id} already read at {seen[turn.id]}")
                seen[turn.id] = f"{path}:{turn.line}"
                kept = _votes_for(turn, class_set, plurality_rule, drop_out_of_set_votes, report)
                if kept is None:
                    continue
                votes, dropped = kept
                dialog = turn.id.rsplit("_", 1)[0]
                audio = session_dir / "sentences" / "wav" / dialog / f"{turn.id}.wav"
                if not audio.is_file():
                    report.skipped[turn.id] = f"audio file missing: {audio}"
                    continue
                report.drop_votes(dropped)
                if turn.id not in transcripts:
                    report.notes["missing_transcript"] += 1
                vad = np.mean(turn.dims, axis=0).tolist() if turn.dims else list(turn.summary_vad)
                session_of[turn.id] = session
                records.append(
                    UtteranceRecord(
                        id=turn.id,
                        corpus=CORPUS,
                        split="",
                        audio_path=audio,
                        transcript=transcripts.get(turn.id, ""),
                        speaker=_speaker(turn.id),
                        classes=class_set.classes,
                        votes={"primary": votes},
                        vad=[float(v) for v in vad],
                        vad_scale=VAD_SCALE,
                    )
                )
    if split == "random":
        assignment = random_split(list(session_of), ratios=ratios, seed=seed)
    else:
        assignment = _session_splits(session_of, test_session, val_session)
    for rec in records:
        rec.split = assignment[rec.id]
    return records, report
