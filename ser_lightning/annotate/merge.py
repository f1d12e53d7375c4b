"""``ser-annotate merge``: shards whose samples also carry the synthetic label sources of one ALM annotator.

The annotations of an annotation store (one ALM annotator: backend, model, mode) become, per utterance:

- sample mode: the vote counts ``synthetic`` (each valid answer one vote) and ``combined`` = human votes +
  synthetic votes, every annotation one equal vote (Scaling Ambiguity Sec. 2.2);
- exact mode: the label distribution ``synthetic_exact``, the mean of the utterance's exact-mode class
  distributions, its entropy that distribution's. A distribution is no vote count, so it is neither added to
  the human votes (no ``combined``) nor counted as votes; its ``votes`` field holds the same distribution
  (sums to 1) because the shard readers take a source's presence and statistics from ``votes``, and the
  card's ``label_sources.synthetic_exact.rule`` says so.

An utterance with no valid synthetic answer keeps the synthetic source null (and ``combined`` equal to its
human votes). The audio members are copied byte for byte (never re-encoded); the
card is built by :func:`ser_lightning.data.shards.card.build_card`, as ``write_shards`` builds it.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ser_lightning.data.shards.card import (
    CARD_NAME,
    PRIMARY,
    REJECTED_NAME,
    build_card,
    common_sources,
    iter_tar_samples,
    label_rules,
    read_card,
)
from ser_lightning.data.shards.files import check_out_dir, shard_tar_writer, write_card
from ser_lightning.data.shards.verify import describe_shard
from ser_lightning.labels import entropy, votes_to_distribution

__all__ = [
    "COMBINED",
    "EXACT_RULE",
    "SYNTHETIC",
    "SYNTHETIC_EXACT",
    "Annotator",
    "exact_distribution",
    "merge_store",
    "read_synthetic",
    "synthetic_distribution",
    "synthetic_votes",
]

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
COMBINED = "combined"
SYNTHETIC_EXACT = "synthetic_exact"
# The card's rule of the exact-mode source: what its (distribution-valued) votes are.
EXACT_RULE = {"name": "alm-exact-distribution", "votes": "the mean exact-mode class distribution (sums to 1)"}


@dataclass(frozen=True)
class Annotator:
    """The (backend, model, mode) whose rows are read from a store."""

    backend: str
    model: str
    mode: str

    @property
    def exact(self) -> bool:
        """Whether the rows are class distributions (exact mode) rather than answers to count."""
        return self.mode == "exact"


@dataclass
class SyntheticAnswers:
    """The rows of one annotator, per utterance id: ``(k, label, probabilities)`` sorted by ``k``."""

    annotator: Annotator
    rows: dict[str, list[tuple[int, str | None, list[float] | None]]] = field(default_factory=dict)


def _connect(store: str | Path) -> sqlite3.Connection:
    path = Path(store)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no annotation store (written by `ser-annotate run --out`)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.execute("SELECT id, backend, model, mode, k, label, probabilities FROM annotations LIMIT 1").fetchall()
    except sqlite3.DatabaseError as err:
        raise ValueError(f"{path}: not an annotation store ({err})") from err
    return conn


def _select_annotator(
    conn: sqlite3.Connection, store: str | Path, backend: str | None, model: str | None, mode: str | None
) -> Annotator:
    """The one annotator of the store matching the given filters; a clear error when none or several match."""
    sql = "SELECT DISTINCT backend, model, mode FROM annotations ORDER BY backend, model, mode"
    found = [Annotator(*r) for r in conn.execute(sql)]
    wanted = [
        a for a in found
        if (backend is None or a.backend == backend) and (model is None or a.model == model)
        and (mode is None or a.mode == mode)
    ]  # fmt: skip
    listed = ", ".join(f"{a.backend}/{a.model}/{a.mode}" for a in found) or "none"
    if not wanted:
        raise ValueError(f"{store}: no annotations of backend={backend} model={model} mode={mode} (it holds: {listed})")
    if len(wanted) > 1:
        raise ValueError(f"{store}: annotations of several annotators ({listed}); choose one with backend/model/mode")
    return wanted[0]


def read_synthetic(
    store: str | Path,
    n: int | None = None,
    backend: str | None = None,
    model: str | None = None,
    mode: str | None = None,
) -> SyntheticAnswers:
    """The stored answers of one annotator (annotations ``k < n`` only when ``n`` is given), grouped by utterance.

    Raises:
        FileNotFoundError: no store at that path.
        ValueError: not a store, no annotator matches, or several match (pass backend / model / mode).
    """
    if n is not None and n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    conn = _connect(store)
    try:
        annotator = _select_annotator(conn, store, backend, model, mode)
        sql = "SELECT id, k, label, probabilities FROM annotations WHERE backend = ? AND model = ? AND mode = ?"
        params: list[Any] = [annotator.backend, annotator.model, annotator.mode]
        if n is not None:
            sql += " AND k < ?"
            params.append(int(n))
        answers = SyntheticAnswers(annotator)
        for uid, k, label, probs in conn.execute(sql + " ORDER BY id, k", params):
            answers.rows.setdefault(uid, []).append((int(k), label, None if probs is None else json.loads(probs)))
    finally:
        conn.close()
    return answers


def synthetic_votes(
    rows: Sequence[tuple[int, str | None, list[float] | None]], classes: Sequence[str]
) -> tuple[np.ndarray | None, int]:
    """The integer vote counts of one utterance's sampled answers and their number (``None``: no valid answer).

    Each ``label`` in ``classes`` is one vote; anything else is invalid. Probabilities are no votes (see
    :func:`synthetic_distribution`).
    """
    index = {c: i for i, c in enumerate(classes)}
    votes = np.zeros(len(classes), dtype=np.float64)
    valid = 0
    for _, label, _probs in rows:
        if label is not None and label in index:
            votes[index[label]] += 1.0
            valid += 1
    return (votes if valid else None), valid


def exact_distribution(probs: Sequence[float] | None, num_classes: int) -> np.ndarray | None:
    """One exact-mode row's class distribution, normalised; ``None`` unless C finite non-negative values, sum > 0."""
    if probs is None:
        return None
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (num_classes,) or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        return None
    return p / p.sum()


def synthetic_distribution(
    rows: Sequence[tuple[int, str | None, list[float] | None]], classes: Sequence[str]
) -> tuple[np.ndarray | None, int]:
    """The mean class distribution of one utterance's exact-mode rows and their number (``None``: none valid)."""
    dists = [d for d in (exact_distribution(probs, len(classes)) for _, _, probs in rows) if d is not None]
    return (np.mean(dists, axis=0) if dists else None), len(dists)


def _label_fields(votes: np.ndarray | None) -> tuple[list[float] | None, list[float] | None, float | None]:
    if votes is None:
        return None, None, None
    dist = votes_to_distribution(votes)
    return [float(x) for x in votes], [float(x) for x in dist], float(entropy(dist))


def merged_meta(meta: dict[str, Any], synthetic: np.ndarray | None, human: str, exact: bool = False) -> dict[str, Any]:
    """A sample JSON with the synthetic label sources added (each null when ``synthetic`` is None).

    Sample mode: ``synthetic`` (votes) and ``combined`` (human + synthetic votes). Exact mode: ``synthetic_exact``,
    the distribution ``synthetic`` (also in its ``votes`` field), entropy of that distribution.
    """
    out = {**meta, "votes": dict(meta["votes"]), "distribution": dict(meta["distribution"])}
    out["entropy"] = dict(meta["entropy"])
    if exact:
        fields = [(SYNTHETIC_EXACT, synthetic)]
    else:
        human_votes = np.asarray(meta["votes"][human], dtype=np.float64)
        combined = human_votes if synthetic is None else human_votes + synthetic  # Sec. 2.2: each one vote
        fields = [(SYNTHETIC, synthetic), (COMBINED, combined)]
    for source, votes in fields:
        out["votes"][source], out["distribution"][source], out["entropy"][source] = _label_fields(votes)
    return out


def _prepare_out(out: Path, shards: Path) -> None:
    """Create ``out``, refusing the input directory and a non-shard directory; clear a previous merge there."""
    if out.resolve() == shards.resolve():
        raise ValueError(f"{out}: merge writes a new shard directory; --out must differ from the input shards")
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / CARD_NAME).is_file():  # a previous merge here: replace only what its card lists
        old = read_card(out)
        if "annotations" not in old:
            raise FileExistsError(f"{out}: holds shards not written by ser-annotate merge; choose another --out")
        for name in [n for names in old["shards"].values() for n in names] + [CARD_NAME, REJECTED_NAME]:
            (out / name).unlink(missing_ok=True)


@dataclass
class _Tally:
    """What the card is built from, gathered while the shards are copied."""

    primary: dict[str, list[list[float]]] = field(default_factory=dict)
    kept_votes: list[dict[str, Any]] = field(default_factory=list)
    train_meta: list[dict[str, Any]] = field(default_factory=list)
    null: dict[str, int] = field(default_factory=dict)  # split -> samples whose synthetic source is null
    annotated: int = 0
    valid: int = 0
    seen: set[str] = field(default_factory=set)


def _copy_shard(src: Path, dst: Path, split: str, answers: SyntheticAnswers, classes: Sequence[str],
                human: str, tally: _Tally) -> None:  # fmt: skip
    """Copy one shard, member bytes unchanged but the JSON, which gains the synthetic label sources."""
    exact = answers.annotator.exact
    labels_of = synthetic_distribution if exact else synthetic_votes
    partial = dst.with_name(dst.name + ".partial")
    with partial.open("wb") as f, shard_tar_writer(f) as sink:
        for key, members in iter_tar_samples(src):
            if "json" not in members:
                raise ValueError(f"{src}: sample {key!r} has no json member")
            meta = json.loads(members["json"].decode("utf-8"))
            uid = str(meta.get("id", key))
            rows = answers.rows.get(uid, [])
            votes, valid = labels_of(rows, classes)
            tally.seen.add(uid)
            tally.annotated += bool(rows)
            tally.valid += valid
            tally.null[split] = tally.null.get(split, 0) + (votes is None)
            new = merged_meta(meta, votes, human, exact)
            text = json.dumps(new, ensure_ascii=False, allow_nan=False).encode("utf-8")
            sink.write({"__key__": key, **members, "json": text})
            tally.primary.setdefault(split, []).append(new["votes"][PRIMARY])
            tally.kept_votes.append(new["votes"])
            if split == "train":
                tally.train_meta.append({"votes": new["votes"], "entropy": new["entropy"]})
    partial.replace(dst)


def merge_store(
    store: str | Path,
    shards: str | Path,
    out: str | Path,
    n: int | None = None,
    human: str = "primary",
    backend: str | None = None,
    model: str | None = None,
    mode: str | None = None,
) -> dict[str, Any]:
    """Write ``out``: the shards of ``shards`` with ``synthetic`` and ``combined`` (or ``synthetic_exact``) added.

    Args:
        store: the annotation store (SQLite, ``ser-annotate run --out``).
        shards: a shard directory (``docs/shard-format.md``).
        out: the new shard directory (not ``shards``, empty or new); a previous merge there is replaced.
        n: use only the first ``n`` annotations (``k < n``) of each utterance; all when ``None``.
        human: the label source of the human votes ``combined`` adds to (``primary``, ``merged``).
        backend: the annotator's backend; needed only when the store holds several annotators.
        model: the annotator's model (same).
        mode: ``sample`` or ``exact`` (same).

    Returns:
        The card written to ``out/card.json``: sources include ``synthetic`` (null in some samples, counted in
        ``null_labels``) and ``combined``, or for an exact-mode annotator ``synthetic_exact`` (its rule:
        :data:`EXACT_RULE`); ``annotations`` records the store, annotator, label sources and counts.
    """
    shards, out = Path(shards), Path(out)
    card = read_card(shards, human)
    classes = tuple(card["classes"])
    answers = read_synthetic(store, n, backend, model, mode)
    _prepare_out(out, shards)
    tally = _Tally()
    splits = list(card["shards"])
    for split in splits:
        tally.primary.setdefault(split, [])
        tally.null.setdefault(split, 0)
        for name in card["shards"][split]:
            _copy_shard(shards / name, out / name, split, answers, classes, human, tally)
    shard_info = {name: describe_shard(out / name) for s in splits for name in card["shards"][s]}
    sources = common_sources(tally.kept_votes)
    exact = answers.annotator.exact
    rules = label_rules(card)  # e.g. how `merged` was built: the copied samples keep it
    if exact:
        rules[SYNTHETIC_EXACT] = dict(EXACT_RULE)
    new = build_card(
        classes, splits, tally.primary, sources, card["shards"], card.get("rejected", 0), card["sample_rate"],
        tally.train_meta, shard_info, null_labels={SYNTHETIC_EXACT if exact else SYNTHETIC: dict(tally.null)},
        label_rules=rules,
    )  # fmt: skip
    for key in ("audio_checks", "reader"):  # counted from the original audio / corpus reader: kept as written
        if key in card:
            new[key] = card[key]
    new["annotations"] = {
        "store": str(store),
        **vars(answers.annotator),
        "n": n,
        "human": human,
        "label_sources": [SYNTHETIC_EXACT] if exact else [SYNTHETIC, COMBINED],
        "utterances": sum(len(v) for v in tally.primary.values()),
        "annotated": tally.annotated,
        "answers": sum(len(r) for r in answers.rows.values()),
        "valid_answers": tally.valid,
        "invalid_answers": sum(len(r) for uid, r in answers.rows.items() if uid in tally.seen) - tally.valid,
        "not_in_shards": len(set(answers.rows) - tally.seen),
    }
    if (shards / REJECTED_NAME).is_file():
        shutil.copyfile(shards / REJECTED_NAME, out / REJECTED_NAME)
    write_card(out, new)
    nulls, total = sum(tally.null.values()), new["annotations"]["utterances"]
    source = SYNTHETIC_EXACT if exact else SYNTHETIC
    log.info("%s: %d samples, %d without a valid synthetic answer (%s null)", out, total, nulls, source)
    return new
