"""Cross-validation folds over a shard directory's samples: pure functions over ``(id, group, split)`` rows.

AmbER² (Sec. 4) reports five-fold cross-validation: on IEMOCAP each session is a fold; on MSP-Podcast five
equal-sized random folds. Each fold's assignment maps every sample id to ``train``, ``val`` or ``test``: the
fold's samples are the test set, and the validation set is carved from the *training* folds (a fraction of
them, whole groups at a time), never a whole extra fold.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ser_lightning.corpora.iemocap import CORPUS as IEMOCAP
from ser_lightning.corpora.iemocap import session_from_id

FOLD_KINDS = ("session", "speaker", "official")
VAL_GROUPS = ("session", "speaker", "id")


class Row(NamedTuple):
    """One sample: its ``id``, its ``session`` and ``speaker`` (``None`` when unknown) and its corpus ``split``."""

    id: str
    session: str | None
    speaker: str | None
    split: str


def row_of(meta: Mapping[str, Any]) -> Row:
    """The :class:`Row` of a sample JSON; ``session``: the stored key, else from an IEMOCAP id (older shards)."""
    uid = str(meta["id"])
    session = meta.get("session")
    if session is None and meta.get("corpus") == IEMOCAP:
        session = session_from_id(uid)
    speaker = meta.get("speaker") or None
    return Row(uid, None if session is None else str(session), speaker, str(meta.get("split", "")))


def parse_folds(spec: str) -> str | int:
    """``session`` / ``speaker`` / ``official``, or an integer K >= 2 (random folds); a clear error otherwise."""
    if spec in FOLD_KINDS:
        return spec
    try:
        k = int(spec)
    except ValueError:
        raise ValueError(f"--folds must be one of {FOLD_KINDS} or an integer >= 2, got {spec!r}") from None
    if k < 2:
        raise ValueError(f"--folds K needs K >= 2, got {k}")
    return k


def _group(row: Row, key: str) -> str:
    value = row.id if key == "id" else getattr(row, key)
    if value is None:
        raise ValueError(f"sample {row.id!r} has no {key}: group by another key (--folds K, or speaker)")
    return str(value)


def fold_test_ids(
    rows: Sequence[Row], folds: str | int, fold_seed: int = 0, official_test: str = "test"
) -> list[list[str]]:
    """The test ids of each fold, in row order.

    One fold per session / speaker (in natural order), the official test split, or K random folds whose sizes
    differ by at most one (seeded by ``fold_seed`` alone).
    """
    if folds == "official":
        test = [r.id for r in rows if r.split == official_test]
        if not test:
            splits = sorted({r.split for r in rows})
            raise ValueError(f"--folds official: no sample in split {official_test!r} (splits: {splits})")
        return [test]
    if isinstance(folds, int):
        if folds > len(rows):
            raise ValueError(f"--folds {folds}: only {len(rows)} samples")
        order = np.random.default_rng(fold_seed).permutation(len(rows))
        chunks = np.array_split(order, folds)  # sizes differ by at most one
        return [[rows[i].id for i in sorted(chunk.tolist())] for chunk in chunks]
    groups = sorted({_group(r, folds) for r in rows}, key=_natural)
    if len(groups) < 2:
        raise ValueError(f"--folds {folds}: the samples have {len(groups)} distinct {folds}(s); need at least 2")
    return [[r.id for r in rows if _group(r, folds) == g] for g in groups]


def _natural(text: str) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def carve_val(train: Sequence[Row], fraction: float, key: str, seed: int) -> set[str]:
    """Ids of a validation set carved from ``train``: whole ``key`` groups, in a seeded order, about ``fraction``.

    Groups are taken while that brings the validation size closer to ``fraction x len(train)`` (at least one
    group, never all of them), so no ``key`` value is in both the training and the validation set.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    sizes = Counter(_group(r, key) for r in train)
    if len(sizes) < 2:
        raise ValueError(f"cannot carve a validation set: the training folds have {len(sizes)} distinct {key}(s)")
    names = sorted(sizes, key=_natural)
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    target = fraction * len(train)
    chosen: set[str] = set()
    size = 0
    for name in order[:-1]:  # never all groups: training keeps at least one
        if not chosen or abs(size + sizes[name] - target) < abs(size - target):
            chosen.add(name)
            size += sizes[name]
    return {r.id for r in train if _group(r, key) in chosen}


def default_val_group(folds: str | int) -> str:
    """The default validation grouping: ``speaker`` for session / speaker folds, else ``id`` (by utterance).

    IEMOCAP's speakers are nested in its sessions: grouping the validation set by speaker keeps every speaker in
    one of train / val / test without losing a whole session to validation.
    """
    return "speaker" if folds in ("session", "speaker") else "id"


def fold_assignments(
    rows: Sequence[Row],
    folds: str | int,
    fold_seed: int = 0,
    val_fraction: float = 0.1,
    val_group: str | None = None,
    official_test: str = "test",
) -> list[dict[str, str]]:
    """One assignment ``{id: "train" | "val" | "test"}`` per fold; every row is in exactly one split of each.

    ``official``: the corpus's ``val`` split is the validation set when it has one (else one is carved from
    ``train``); splits other than train / val / ``official_test`` are left out. Otherwise the rows outside the
    fold's test ids are the training folds, and the validation set is carved from them (:func:`carve_val`,
    seeded by ``fold_seed`` and the fold index, never by a run seed).
    """
    ids = [r.id for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise ValueError(f"duplicate sample id {dup!r}")
    key = val_group or default_val_group(folds)
    if key not in VAL_GROUPS:
        raise ValueError(f"val_group must be one of {VAL_GROUPS}, got {key!r}")
    out = []
    for f, test in enumerate(fold_test_ids(rows, folds, fold_seed, official_test)):
        test_set = set(test)
        if folds == "official":
            val = {r.id for r in rows if r.split == "val"}
            train = [r for r in rows if r.split == "train" or r.id in val]
            val = val or carve_val(train, val_fraction, key, fold_seed)
        else:
            train = [r for r in rows if r.id not in test_set]
            val = carve_val(train, val_fraction, key, fold_seed * 1000 + f)
        assignment = {r.id: "val" if r.id in val else "train" for r in train}
        assignment.update({i: "test" for i in test})
        out.append(assignment)
    return out


def assignment_counts(assignment: Mapping[str, str]) -> dict[str, int]:
    """Samples per split of an assignment (``train``, ``val``, ``test``)."""
    counts = Counter(assignment.values())
    return {s: counts.get(s, 0) for s in ("train", "val", "test")}


def rows_of(metas: Iterable[Mapping[str, Any]]) -> list[Row]:
    """:func:`row_of` over sample JSON dicts (``iter_shard_meta`` of a shard directory)."""
    return [row_of(m) for m in metas]
