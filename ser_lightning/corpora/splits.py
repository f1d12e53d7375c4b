"""Seeded, order-independent train/val/test assignments for corpus readers.

Every helper sorts the ids (or groups) before shuffling them with ``numpy.random.default_rng(seed)``,
so the result depends only on the set of ids and the seed, never on the order a reader found them in.
Split sizes come from the ratios by the largest-remainder rule (ties toward the earlier split); a
split with a non-zero ratio is never left empty while another split has more than one member to spare.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from ser_lightning.corpora.record import SPLIT_NAMES

ORDERED_SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "dev": "val",
    "development": "val",
    "valid": "val",
    "validation": "val",
}


def normalise_split(name: str) -> str | None:
    """The canonical split name for ``name`` (case-insensitive; dev/valid/validation -> val), or ``None``."""
    key = name.strip().casefold()
    key = SPLIT_ALIASES.get(key, key)
    return key if key in SPLIT_NAMES else None


def split_sizes(n: int, ratios: Sequence[float]) -> list[int]:
    """Sizes that divide ``n`` items by ``ratios`` (which must sum to 1) with the largest-remainder rule.

    Args:
        n: number of items (or groups) to divide.
        ratios: one non-negative ratio per split.

    Returns:
        One size per ratio, summing to ``n``.

    Raises:
        ValueError: if a ratio is negative or the ratios do not sum to 1.
    """
    r = np.asarray(ratios, dtype=np.float64)
    if r.ndim != 1 or r.size == 0 or np.any(r < 0) or abs(float(r.sum()) - 1.0) > 1e-6:
        raise ValueError(f"ratios must be non-negative and sum to 1, got {tuple(ratios)}")
    exact = r * n
    sizes = np.floor(exact + 1e-9).astype(int)
    order = sorted(range(r.size), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in order[: n - int(sizes.sum())]:
        sizes[i] += 1
    # A split asked for (ratio > 0) gets at least one member when another split can spare one.
    for i in range(r.size):
        if r[i] > 0 and sizes[i] == 0:
            donor = int(np.argmax(sizes))
            if sizes[donor] > 1:
                sizes[donor] -= 1
                sizes[i] += 1
    return [int(s) for s in sizes]


def _check_ratios(ratios: Sequence[float]) -> None:
    if len(ratios) != len(ORDERED_SPLITS):
        raise ValueError(f"ratios must give (train, val, test), got {tuple(ratios)}")


def _sorted_unique(ids: Sequence[str]) -> list[str]:
    ordered = sorted(ids)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a == b:
            raise ValueError(f"duplicate id {a!r} in split input")
    return ordered


def random_split(ids: Sequence[str], ratios: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> dict[str, str]:
    """Assign each id to train/val/test at random, reproducibly.

    Args:
        ids: unique utterance ids (any order: they are sorted first).
        ratios: fractions for (train, val, test), summing to 1.
        seed: seed of the shuffle.

    Returns:
        id -> ``"train"``, ``"val"`` or ``"test"``.
    """
    _check_ratios(ratios)
    ordered = _sorted_unique(ids)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    sizes = split_sizes(len(ordered), ratios)
    out: dict[str, str] = {}
    start = 0
    for name, size in zip(ORDERED_SPLITS, sizes, strict=True):
        for k in perm[start : start + size]:
            out[ordered[k]] = name
        start += size
    return out


def group_split(
    ids: Sequence[str],
    groups: Sequence[Hashable] | Mapping[str, Hashable],
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, str]:
    """Assign whole groups (e.g. speakers) to train/val/test, so no group spans two splits.

    The ratios divide the number of groups, not of utterances (CREMA-D's 91 actors, 70/10/20 ->
    64/9/18 actors).

    Args:
        ids: unique utterance ids.
        groups: the group of each id, as a sequence aligned with ``ids`` or a mapping id -> group.
        ratios: fractions of groups for (train, val, test), summing to 1.
        seed: seed of the group shuffle.

    Returns:
        id -> ``"train"``, ``"val"`` or ``"test"``.
    """
    _check_ratios(ratios)
    _sorted_unique(ids)
    if isinstance(groups, Mapping):
        missing = [i for i in ids if i not in groups]
        if missing:
            raise ValueError(f"group_split: no group given for ids {missing[:5]}")
        group_of = {i: groups[i] for i in ids}
    else:
        if len(groups) != len(ids):
            raise ValueError(f"group_split: {len(ids)} ids but {len(groups)} groups")
        group_of = dict(zip(ids, groups, strict=True))
    split_of_group = random_split({str(g) for g in group_of.values()}, ratios, seed)  # whole groups to a split
    return {i: split_of_group[str(g)] for i, g in group_of.items()}


def fold_split(
    ids: Sequence[str], folds: int = 5, fold: int = 0, seed: int = 0, val_fold: int | None = None
) -> dict[str, str]:
    """K equal-sized folds (sizes differ by at most one): fold ``fold`` is test, ``val_fold`` val, the rest train.

    Args:
        ids: unique utterance ids.
        folds: number of folds K (at least 3, so that train is not empty).
        fold: index of the test fold, in ``[0, K)``.
        seed: seed of the shuffle that deals ids into folds; the same seed gives the same folds for every ``fold``.
        val_fold: index of the validation fold; by default the next fold, ``(fold + 1) % K``.

    Returns:
        id -> ``"train"``, ``"val"`` or ``"test"``.
    """
    if folds < 3:
        raise ValueError(f"fold_split needs at least 3 folds, got {folds}")
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in [0, {folds}), got {fold}")
    val_fold = (fold + 1) % folds if val_fold is None else val_fold
    if not 0 <= val_fold < folds or val_fold == fold:
        raise ValueError(f"val_fold must be in [0, {folds}) and differ from fold {fold}, got {val_fold}")
    ordered = _sorted_unique(ids)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    out: dict[str, str] = {}
    for k, members in enumerate(np.array_split(perm, folds)):
        name = "test" if k == fold else "val" if k == val_fold else "train"
        for m in members:
            out[ordered[m]] = name
    return out
