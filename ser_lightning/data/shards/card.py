"""The card of a shard directory (``card.json``, ``rejected.jsonl``): build it, read it, and read what it lists.

The format is specified in ``docs/shard-format.md``; :func:`ser_lightning.data.shards.write_shards`
writes the directories read here.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ser_lightning.labels import plurality, quantile_edges
from ser_lightning.stats import vote_statistics

logger = logging.getLogger(__name__)

CARD_NAME = "card.json"
REJECTED_NAME = "rejected.jsonl"
PRIMARY = "primary"


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------


def common_sources(kept_votes: list[dict[str, list[float]]]) -> list[str]:
    """``primary`` then the other label sources every kept sample has (sorted)."""
    if not kept_votes:
        return [PRIMARY]
    common = set.intersection(*(set(v) for v in kept_votes))
    partial = set.union(*(set(v) for v in kept_votes)) - common
    if partial:
        logger.warning("label sources %s are missing in some samples; not listed in the card", sorted(partial))
    return [PRIMARY, *sorted(common - {PRIMARY})]


def build_card(
    classes: tuple[str, ...],
    splits: list[str],
    primary: dict[str, list[list[float]]],
    sources: list[str],
    shards: dict[str, list[str]],
    num_rejected: int,
    sample_rate: int,
    train_meta: Iterable[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The card dict (keys as in ``docs/shard-format.md``).

    Args:
        classes: the class set.
        splits: the splits, in card order.
        primary: split -> the ``primary`` votes of its kept samples (the ``stats`` are computed on them).
        sources: the label sources every sample has (see :func:`common_sources`).
        shards: split -> shard file names.
        num_rejected: lines in ``rejected.jsonl``.
        sample_rate: rate of the stored audio in Hz.
        train_meta: the sample JSON (``votes`` and ``entropy`` suffice) of the kept train samples, for
            ``label_sources`` (see :func:`label_source_stats`).
    """
    all_votes = [v for s in splits for v in primary[s]]
    stats = {"all": vote_statistics(np.asarray(all_votes).reshape(-1, len(classes)), classes)}
    for s in splits:
        stats[s] = vote_statistics(np.asarray(primary[s]).reshape(-1, len(classes)), classes)
    return {
        "classes": list(classes),
        "sources": sources,
        "rejected": num_rejected,
        "sample_rate": sample_rate,
        "num_samples": {s: len(primary[s]) for s in splits},
        "shards": {s: shards.get(s, []) for s in splits},
        "stats": stats,
        "label_sources": label_source_stats(train_meta, sources, len(classes)),
    }


def label_source_stats(
    train_meta: Iterable[dict[str, Any]], sources: Sequence[str], num_classes: int
) -> dict[str, dict[str, list[float] | list[int] | None]]:
    """Per label source over a training set: ``tertile_edges`` of the stored entropies, plurality ``class_counts``.

    The edges are the inner tertiles of each sample's stored ``entropy[source]`` (nats), so the bins the
    metrics use are the ones the stored entropies fall in; the counts tie toward the first class (CB-CE).
    Both are ``None`` for an empty training set.

    Args:
        train_meta: the sample JSON dicts of the training set (one pass; ``votes`` and ``entropy`` are read).
        sources: the label sources to describe.
        num_classes: C.
    """
    votes: dict[str, list[list[float]]] = {s: [] for s in sources}
    entropies: dict[str, list[float]] = {s: [] for s in sources}
    for meta in train_meta:
        for s in sources:
            votes[s].append(meta["votes"][s])
            entropies[s].append(meta["entropy"][s])
    out: dict[str, dict[str, Any]] = {}
    for s in sources:
        if not votes[s]:
            out[s] = {"tertile_edges": None, "class_counts": None}
            continue
        labels, _ = plurality(np.asarray(votes[s], dtype=np.float64).reshape(-1, num_classes))
        out[s] = {
            "tertile_edges": [float(e) for e in quantile_edges(entropies[s], 3)],
            "class_counts": np.bincount(labels, minlength=num_classes).tolist(),
        }
    return out


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_card(shard_dir: str | Path, label_source: str | None = None) -> dict[str, Any]:
    """The ``card.json`` of a shard directory, checked to list ``label_source`` when one is given.

    Raises:
        FileNotFoundError: the directory has no card (not written by ``ser-prepare``).
        ValueError: ``label_source`` is not among the card's ``sources``.
    """
    path = Path(shard_dir) / CARD_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no shard card; is {shard_dir} a directory written by ser-prepare?")
    with path.open(encoding="utf-8") as f:
        card = json.load(f)
    sources = card.get("sources", [])
    if label_source is not None and sources and label_source not in sources:
        raise ValueError(f"{path}: label_source {label_source!r} is not in these shards (they have {sources})")
    return card


def shard_paths(shard_dir: str | Path, split: str | None = None, card: dict[str, Any] | None = None) -> list[Path]:
    """The shard files the card lists, for one split or all (in split order); ``card``: already read."""
    card = read_card(shard_dir) if card is None else card
    splits = [split] if split is not None else list(card["shards"])
    if split is not None and split not in card["shards"]:
        raise KeyError(f"{shard_dir}: no split {split!r}; the card has {list(card['shards'])}")
    return [Path(shard_dir) / name for s in splits for name in card["shards"][s]]


def _tar_meta(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON members of one shard, in order, without decoding any audio."""
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".json"):
                f = tar.extractfile(member)
                assert f is not None
                try:
                    yield json.loads(f.read().decode("utf-8"))
                except ValueError as err:
                    raise ValueError(f"{path}: member {member.name}: bad JSON ({err})") from err


def read_durations(shard: str | Path, limit: int = 512) -> list[float]:
    """``duration`` (seconds) from the JSON of the first ``limit`` samples of a shard, without decoding audio."""
    durations: list[float] = []
    for meta in _tar_meta(Path(shard)):
        if len(durations) >= limit:
            break
        if isinstance(meta.get("duration"), int | float) and meta["duration"] > 0:
            durations.append(float(meta["duration"]))
    return durations


def iter_shard_meta(shard_dir: str | Path, split: str | None = None) -> Iterator[dict[str, Any]]:
    """Yield the JSON dict of every sample (in shard order) without decoding any audio.

    Args:
        shard_dir: a directory written by :func:`ser_lightning.data.shards.write_shards`.
        split: only this split's shards; all when ``None``.
    """
    for path in shard_paths(shard_dir, split):
        yield from _tar_meta(path)


def shard_dir_statistics(shard_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The ``ser-stats`` statistics of a shard directory's primary votes: ``all`` and each split.

    Read from ``card.json``; keys per entry as in :data:`ser_lightning.stats.STATS_KEYS`.
    """
    card = read_card(shard_dir)
    if "stats" not in card:
        raise KeyError(f"{Path(shard_dir) / CARD_NAME}: card has no 'stats' (written by an older ser-prepare?)")
    return card["stats"]


def rejection_summary(shard_dir: str | Path) -> dict[str, Counter[str]]:
    """Rejected utterances of a shard directory counted per split (``reader`` when the reader skipped them).

    Values count reasons, cut at the first ``:`` (e.g. ``too short``, ``missing audio file``).
    """
    summary: dict[str, Counter[str]] = {}
    path = Path(shard_dir) / REJECTED_NAME
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{path}:{lineno}: bad JSON ({err})") from err
            split = row.get("split") or "reader"
            summary.setdefault(split, Counter())[str(row.get("reason", "")).split(":")[0]] += 1
    return summary
