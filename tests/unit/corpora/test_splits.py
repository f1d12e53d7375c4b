"""Seeded split helpers: sizes, determinism, order independence, groups and folds."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ser_lightning.corpora.splits import fold_split, group_split, normalise_split, random_split, split_sizes

IDS = [f"utt{i:03d}" for i in range(100)]


def test_split_sizes_largest_remainder() -> None:
    assert split_sizes(100, (0.8, 0.1, 0.1)) == [80, 10, 10]
    assert split_sizes(91, (0.7, 0.1, 0.2)) == [64, 9, 18]  # 63.7, 9.1, 18.2: the .7 gets the spare one
    assert split_sizes(5, (0.8, 0.1, 0.1)) == [3, 1, 1]  # val and test are not left empty
    assert split_sizes(1, (0.8, 0.1, 0.1)) == [1, 0, 0]
    assert split_sizes(0, (0.8, 0.1, 0.1)) == [0, 0, 0]
    assert split_sizes(10, (1.0, 0.0, 0.0)) == [10, 0, 0]


@pytest.mark.parametrize("ratios", [(0.8, 0.1), (0.5, 0.5, 0.5), (1.2, -0.1, -0.1)])
def test_bad_ratios(ratios: tuple) -> None:
    with pytest.raises(ValueError, match="ratios"):
        random_split(IDS, ratios=ratios)


def test_random_split_seeded_and_order_independent() -> None:
    a = random_split(IDS, seed=7)
    shuffled = IDS[:]
    random.Random(1).shuffle(shuffled)
    assert random_split(shuffled, seed=7) == a
    assert Counter(a.values()) == Counter({"train": 80, "val": 10, "test": 10})
    assert random_split(IDS, seed=8) != a
    assert set(a) == set(IDS)


def test_random_split_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="duplicate id 'utt000'"):
        random_split([*IDS, "utt000"])


def test_group_split_keeps_groups_whole() -> None:
    groups = [f"spk{i % 20:02d}" for i in range(100)]  # 20 speakers, 5 utterances each
    out = group_split(IDS, groups, ratios=(0.7, 0.1, 0.2), seed=1)
    split_of_group: dict[str, set[str]] = {}
    for utt, g in zip(IDS, groups, strict=True):
        split_of_group.setdefault(g, set()).add(out[utt])
    assert all(len(s) == 1 for s in split_of_group.values())
    assert Counter(next(iter(s)) for s in split_of_group.values()) == Counter({"train": 14, "val": 2, "test": 4})
    # A mapping gives the same answer as an aligned sequence; input order does not matter.
    mapping = dict(zip(IDS, groups, strict=True))
    assert group_split(IDS[::-1], mapping, ratios=(0.7, 0.1, 0.2), seed=1) == out


def test_group_split_errors() -> None:
    with pytest.raises(ValueError, match="100 ids but 3 groups"):
        group_split(IDS, ["a", "b", "c"])
    with pytest.raises(ValueError, match="no group given"):
        group_split(IDS, {"utt000": "a"})


def test_fold_split_equal_folds_cover_every_id_once() -> None:
    ids = IDS[:23]
    tests: Counter[str] = Counter()
    for fold in range(5):
        out = fold_split(ids, folds=5, fold=fold, seed=4)
        sizes = Counter(out.values())
        assert sizes["test"] in (4, 5)
        assert sizes["val"] in (4, 5)
        assert sum(sizes.values()) == 23
        tests.update(u for u, s in out.items() if s == "test")
        # The val fold of fold k is the test fold of fold k+1.
        nxt = fold_split(ids, folds=5, fold=(fold + 1) % 5, seed=4)
        assert {u for u, s in out.items() if s == "val"} == {u for u, s in nxt.items() if s == "test"}
    assert tests == Counter({u: 1 for u in ids})


def test_fold_split_val_fold_and_errors() -> None:
    out = fold_split(IDS, folds=5, fold=4, val_fold=0)
    assert out == fold_split(IDS, folds=5, fold=4)  # default val fold: (4 + 1) % 5 = 0
    assert Counter(out.values()) == Counter({"train": 60, "val": 20, "test": 20})
    with pytest.raises(ValueError, match="fold must be"):
        fold_split(IDS, fold=5)
    with pytest.raises(ValueError, match="val_fold"):
        fold_split(IDS, fold=1, val_fold=1)
    with pytest.raises(ValueError, match="at least 3 folds"):
        fold_split(IDS, folds=2)


def test_normalise_split() -> None:
    assert normalise_split(" Dev ") == "val"
    assert normalise_split("validation") == "val"
    assert normalise_split("TEST2") == "test2"
    assert normalise_split("holdout") is None
