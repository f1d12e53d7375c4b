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

from ser_lightning.data.shards import storage
from ser_lightning.data.shards.storage import Location
from ser_lightning.labels import MERGED_RULE, plurality, quantile_edges, votes_to_distribution
from ser_lightning.stats import vote_statistics

logger = logging.getLogger(__name__)

CARD_NAME = "card.json"
REJECTED_NAME = "rejected.jsonl"
PRIMARY = "primary"
LABEL_FIELDS = ("votes", "distribution", "entropy")  # per label source in every sample JSON
RULED_SOURCES = {"merged": MERGED_RULE}  # label source -> the rule its card entry must record to be used


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
    shard_info: dict[str, dict[str, Any]] | None = None,
    null_labels: dict[str, dict[str, int]] | None = None,
    label_rules: dict[str, dict[str, Any]] | None = None,
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
        shard_info: shard file name -> ``{"samples", "sha256"}`` (see :func:`describe_shard`).
        null_labels: label source -> split -> samples whose source is null (``ser-annotate merge``'s
            ``synthetic``); written as the card's ``null_labels`` when a source has any (see :func:`null_label_counts`).
        label_rules: label source -> the rule that built its votes (``ReadReport.label_rules``), stored as
            ``label_sources[source]["rule"]`` for the sources in ``sources``.
    """
    all_votes = [v for s in splits for v in primary[s]]
    stats = {"all": vote_statistics(np.asarray(all_votes).reshape(-1, len(classes)), classes)}
    for s in splits:
        stats[s] = vote_statistics(np.asarray(primary[s]).reshape(-1, len(classes)), classes)
    card = {
        "classes": list(classes),
        "sources": sources,
        "rejected": num_rejected,
        "sample_rate": sample_rate,
        "num_samples": {s: len(primary[s]) for s in splits},
        "shards": {s: shards.get(s, []) for s in splits},
        "shard_info": {name: shard_info[name] for s in splits for name in shards.get(s, [])} if shard_info else {},
        "stats": stats,
        "label_sources": label_source_stats(train_meta, sources, len(classes)),
    }
    for source, rule in (label_rules or {}).items():
        if source in card["label_sources"]:
            card["label_sources"][source]["rule"] = dict(rule)
    nullable = {s: dict(counts) for s, counts in (null_labels or {}).items() if any(counts.values())}
    if nullable:
        card["null_labels"] = nullable
    return card


def null_label_counts(metas: dict[str, list[dict[str, Any]]], sources: Sequence[str]) -> dict[str, dict[str, int]]:
    """Label source -> split -> samples whose ``votes[source]`` is null, for the sources and splits of ``metas``."""
    return {s: {split: sum(m["votes"].get(s, 0) is None for m in ms) for split, ms in metas.items()} for s in sources}


def label_source_stats(
    train_meta: Iterable[dict[str, Any]], sources: Sequence[str], num_classes: int
) -> dict[str, dict[str, list[float] | list[int] | None]]:
    """Per label source over a training set: entropy ``tertile_edges``, ``class_counts``, ``mean_distribution``.

    The edges are the inner tertiles of each sample's stored ``entropy[source]`` (nats), so the bins the
    metrics use are the ones the stored entropies fall in; the counts tie toward the first class (CB-CE);
    ``mean_distribution`` is the mean of the samples' ``votes[source] / sum`` (the train-mean reference
    predictor). A sample whose source is null (no labels of it, e.g. ``synthetic``) is left out of that
    source's statistics. All are ``None`` for a training set without labels of the source.

    Args:
        train_meta: the sample JSON dicts of the training set (one pass; ``votes`` and ``entropy`` are read).
        sources: the label sources to describe.
        num_classes: C.
    """
    votes: dict[str, list[list[float]]] = {s: [] for s in sources}
    entropies: dict[str, list[float]] = {s: [] for s in sources}
    for meta in train_meta:
        for s in sources:
            v = sample_field(meta, "votes", s)
            if v is not None:  # a null label source (ser-annotate merge's synthetic) has no statistics
                votes[s].append(v)
                entropies[s].append(sample_field(meta, "entropy", s))
    out: dict[str, dict[str, Any]] = {}
    for s in sources:
        if not votes[s]:
            out[s] = {"tertile_edges": None, "class_counts": None, "mean_distribution": None}
            continue
        counts = np.asarray(votes[s], dtype=np.float64).reshape(-1, num_classes)
        labels, _ = plurality(counts)
        out[s] = {
            "tertile_edges": [float(e) for e in quantile_edges(entropies[s], 3)],
            "class_counts": np.bincount(labels, minlength=num_classes).tolist(),
            "mean_distribution": votes_to_distribution(counts).mean(axis=0).tolist(),
        }
    return out


def label_rules(card: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Label source -> the rule its card entry records (``label_sources[source]["rule"]``), to carry to a new card."""
    entries = card.get("label_sources") or {}
    return {s: dict(e["rule"]) for s, e in entries.items() if isinstance(e, dict) and isinstance(e.get("rule"), dict)}


def check_label_rule(card: dict[str, Any], label_source: str, where: str | Path = "card.json") -> None:
    """Refuse a label source whose meaning changed (``merged``) when the card does not record its current rule.

    Raises:
        ValueError: the card's ``label_sources[label_source]["rule"]["name"]`` is not the expected rule.
    """
    expected = RULED_SOURCES.get(label_source)
    if expected is None:
        return
    rule = label_rules(card).get(label_source, {})
    if rule.get("name") != expected:
        found = f"rule {rule.get('name')!r}" if rule else "no rule"
        raise ValueError(
            f"{where}: label_source {label_source!r} must be built by the {expected!r} rule (the entropy-curriculum "
            f"authors' weighted primary+secondary merge); this card records {found}, so its {label_source} votes "
            f"were written by an older ser-prepare. Re-run `ser-prepare msp-podcast` to rewrite the shards."
        )


def sample_field(meta: dict[str, Any], field: str, source: str, where: str = "") -> Any:
    """``meta[field][source]`` of a sample JSON, or a ``ValueError`` naming the sample (and ``where``: its shard)."""
    try:
        return meta[field][source]
    except (KeyError, TypeError, IndexError):
        place = f" of {where}" if where else ""
        raise ValueError(f"sample {meta.get('id', '?')!r}{place} has no {field}[{source!r}]") from None


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_card(shard_dir: Location, label_source: str | None = None) -> dict[str, Any]:
    """The ``card.json`` of a shard directory, checked to list ``label_source`` when one is given.

    Raises:
        FileNotFoundError: the directory has no card (not written by ``ser-prepare``).
        ValueError: the card is not valid JSON or not a card, or ``label_source`` is not among its ``sources``.
    """
    path = storage.join(shard_dir, CARD_NAME)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: no shard card; is {shard_dir} a directory written by ser-prepare?")
    try:
        card = json.loads(storage.read_text(path))
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: corrupt shard card ({err}); rewrite it with data.shards.refresh_card") from err
    if not isinstance(card, dict) or not isinstance(card.get("shards"), dict):
        raise ValueError(f"{path}: not a shard card (no 'shards' mapping); rewrite it with refresh_card")
    sources = card.get("sources", [])
    if label_source is not None and sources and label_source not in sources:
        raise ValueError(f"{path}: label_source {label_source!r} is not in these shards (they have {sources})")
    return card


def shard_paths(shard_dir: Location, split: str | None = None, card: dict[str, Any] | None = None) -> list[Location]:
    """The shard files the card lists, for one split or all (in split order); ``card``: already read.

    Paths for a local directory, URLs for a remote prefix (:func:`~ser_lightning.data.shards.storage.join`).
    """
    card = read_card(shard_dir) if card is None else card
    splits = [split] if split is not None else list(card["shards"])
    if split is not None and split not in card["shards"]:
        raise KeyError(f"{shard_dir}: no split {split!r}; the card has {list(card['shards'])}")
    return [storage.join(shard_dir, name) for s in splits for name in card["shards"][s]]


def open_tar(path: Location) -> tarfile.TarFile:
    """A shard as a tar archive: a local file with random access, a remote one as a (retried) stream."""
    location = storage.as_location(path)
    if isinstance(location, Path):
        return tarfile.open(location, "r:")
    return tarfile.open(fileobj=storage.open_binary(location), mode="r|")


def _tar_meta(path: Location, sources: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    """The JSON members of one shard, in order, without decoding any audio; ``sources``: label fields checked."""
    try:
        with open_tar(path) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".json"):
                    f = tar.extractfile(member)
                    assert f is not None
                    try:
                        meta = json.loads(f.read().decode("utf-8"))
                    except ValueError as err:
                        raise ValueError(f"{path}: member {member.name}: bad JSON ({err})") from err
                    for source in sources:
                        for field in LABEL_FIELDS:
                            sample_field(meta, field, source, f"{path} (member {member.name})")
                    yield meta
    except (tarfile.TarError, EOFError) as err:
        raise ValueError(f"{path}: damaged shard ({type(err).__name__}: {err}); see verify_shards") from err


def iter_tar_samples(path: Location) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: member bytes})`` of each sample of a shard, in order, undecoded; a damaged tar is named."""
    key: str | None = None
    members: dict[str, bytes] = {}
    try:
        with open_tar(path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.split("/")[-1]
                k, _, ext = name.partition(".")
                if key is not None and k != key:
                    yield key, members
                    members = {}
                key = k
                f = tar.extractfile(member)
                assert f is not None
                members[ext] = f.read()
    except (tarfile.TarError, EOFError) as err:
        raise ValueError(f"{path}: damaged shard ({type(err).__name__}: {err}); see verify_shards") from err
    if key is not None:
        yield key, members


def read_durations(shard: Location, limit: int = 512) -> list[float]:
    """``duration`` (seconds) from the JSON of the first ``limit`` samples of a shard, without decoding audio."""
    durations: list[float] = []
    for meta in _tar_meta(shard):
        if len(durations) >= limit:
            break
        if isinstance(meta.get("duration"), int | float) and meta["duration"] > 0:
            durations.append(float(meta["duration"]))
    return durations


def iter_shard_meta(
    shard_dir: Location, split: str | None = None, sources: Sequence[str] = ()
) -> Iterator[dict[str, Any]]:
    """Yield the JSON dict of every sample (in shard order) without decoding any audio.

    Args:
        shard_dir: a directory written by :func:`ser_lightning.data.shards.write_shards`.
        split: only this split's shards; all when ``None``.
        sources: label sources whose ``votes``, ``distribution`` and ``entropy`` every sample must have.

    Raises:
        ValueError: a shard is damaged, or a sample lacks a field; the message names the shard (and member).
    """
    for path in shard_paths(shard_dir, split):
        yield from _tar_meta(path, sources)


def shard_dir_statistics(shard_dir: str | Path) -> dict[str, dict[str, Any]]:
    """The ``ser-stats`` statistics of a shard directory's primary votes: ``all`` and each split.

    Read from ``card.json``; keys per entry as in :data:`ser_lightning.stats.STATS_KEYS`.
    """
    card = read_card(shard_dir)
    if "stats" not in card:
        raise KeyError(f"{storage.join(shard_dir, CARD_NAME)}: card has no 'stats' (written by an older ser-prepare?)")
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
