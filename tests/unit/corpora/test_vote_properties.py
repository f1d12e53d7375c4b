"""Property-based tests (hypothesis) of the vote parsers: votes -> distribution, merging, plurality, kappa, manifests.

References are computed independently (per-rater expansion and pair counting, plain Python loops), never by the
function under test.
"""

from __future__ import annotations

import csv
import itertools
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ser_lightning.corpora.manifest import read_manifest
from ser_lightning.labels import fleiss_kappa, get_class_set, plurality, votes_to_distribution

SETTINGS = settings(max_examples=40, deadline=None)
CLASSES = ("Angry", "Happy", "Sad", "Neutral")


def _counts(num_classes: int, max_count: int = 9, min_total: int = 1) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, max_count), min_size=num_classes, max_size=num_classes).filter(
        lambda c: sum(c) >= min_total
    )


def _matrix(max_items: int = 8) -> st.SearchStrategy[tuple[int, list[list[int]]]]:
    return st.integers(2, 5).flatmap(
        lambda c: st.tuples(st.just(c), st.lists(_counts(c, 6, min_total=2), min_size=1, max_size=max_items))
    )


# --------------------------------------------------------------------------------------------
# votes -> distribution, merge, plurality
# --------------------------------------------------------------------------------------------


@SETTINGS
@given(counts=st.integers(2, 9).flatmap(lambda c: _counts(c)), scale=st.floats(1e-3, 1e3))
def test_distribution_normalises_and_ignores_scale(counts: list[int], scale: float) -> None:
    p = votes_to_distribution(counts)
    total = sum(counts)
    assert p == pytest.approx([c / total for c in counts], abs=1e-12)  # y_c = n_c / N (AmbER² Eq. 1)
    assert np.all(p >= 0)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(votes_to_distribution(np.asarray(counts) * scale), p, rtol=1e-9, atol=1e-12)


@SETTINGS
@given(c=st.integers(2, 9))
def test_distribution_of_no_votes_or_negative_votes_raises(c: int) -> None:
    with pytest.raises(ValueError, match="at least one vote"):
        votes_to_distribution([0] * c)
    with pytest.raises(ValueError, match="non-negative"):
        votes_to_distribution([1] * (c - 1) + [-1])


@SETTINGS
@given(data=st.data(), c=st.integers(2, 8))
def test_plurality_ties_go_to_the_first_listed_class(data: st.DataObject, c: int) -> None:
    rows = data.draw(st.lists(_counts(c, max_count=4), min_size=1, max_size=10))
    labels, ties = plurality(np.asarray(rows, dtype=float))
    expected = [min(i for i, n in enumerate(row) if n == max(row)) for row in rows]
    assert labels.tolist() == expected
    assert ties == sum(1 for row in rows if row.count(max(row)) > 1)
    # a joint class permutation moves the winner along unless the row is tied
    perm = data.draw(st.permutations(range(c)))
    permuted, _ = plurality(np.asarray(rows, dtype=float)[:, perm])
    for row, label, new in zip(rows, labels, permuted, strict=True):
        if row.count(max(row)) == 1:
            assert perm[new] == label


# --------------------------------------------------------------------------------------------
# Fleiss' kappa
# --------------------------------------------------------------------------------------------


def _kappa_by_pairs(rows: list[list[int]]) -> float:
    """Kappa from rater labels: P_i = share of agreeing ordered rater pairs, p_j from all labels."""
    per_item = [[j for j, n in enumerate(row) for _ in range(n)] for row in rows]
    agree = [
        sum(a == b for a, b in itertools.permutations(labels, 2)) / (len(labels) * (len(labels) - 1))
        for labels in per_item
    ]
    pooled = Counter(label for labels in per_item for label in labels)
    total = sum(pooled.values())
    chance = sum((n / total) ** 2 for n in pooled.values())
    return (sum(agree) / len(agree) - chance) / (1 - chance) if chance < 1 else float("nan")


@SETTINGS
@given(data=_matrix(), seed=st.integers(0, 2**16))
def test_fleiss_kappa_bounds_reference_and_permutations(data: tuple[int, list[list[int]]], seed: int) -> None:
    c, rows = data
    result = fleiss_kappa(rows)
    expected = _kappa_by_pairs(rows)
    assert result.items == len(rows)
    assert result.excluded == 0
    assert 0.0 <= result.observed <= 1.0 + 1e-12
    assert 1.0 / c - 1e-12 <= result.expected <= 1.0 + 1e-12
    if np.isnan(expected):
        assert np.isnan(result.kappa)
        return
    assert result.kappa == pytest.approx(expected, abs=1e-9)
    assert result.kappa <= 1.0 + 1e-12
    rng = np.random.default_rng(seed)
    n = np.asarray(rows, dtype=float)
    shuffled = n[rng.permutation(len(rows))][:, rng.permutation(c)]  # items and classes reordered jointly
    assert fleiss_kappa(shuffled).kappa == pytest.approx(result.kappa, abs=1e-9)


@SETTINGS
@given(data=_matrix())
def test_fleiss_kappa_leaves_out_items_with_fewer_than_two_raters(data: tuple[int, list[list[int]]]) -> None:
    c, rows = data
    lonely = [0] * c
    lonely[0] = 1  # one rater: no pair to agree
    result = fleiss_kappa([*rows, lonely, [0] * c])
    assert result.excluded == 2
    assert result.items == len(rows)
    base = fleiss_kappa(rows).kappa
    assert result.kappa == pytest.approx(base, abs=1e-12) or (np.isnan(base) and np.isnan(result.kappa))


# --------------------------------------------------------------------------------------------
# Manifests: what is written is read back; nothing outside the class set slips in
# --------------------------------------------------------------------------------------------

ROWS = st.lists(_counts(len(CLASSES)), min_size=1, max_size=6)
OUTSIDE = st.lists(st.integers(0, 9), min_size=1, max_size=6)


def _write_csv(folder: Path, header: list[str], rows: list[list[object]]) -> Path:
    for i in range(len(rows)):
        (folder / f"u{i}.wav").write_bytes(b"")  # the reader only checks that the file exists
    path = folder / "m.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@SETTINGS
@given(rows=ROWS, order=st.permutations(range(len(CLASSES))), upper=st.booleans())
def test_csv_vote_columns_round_trip(rows: list[list[int]], order: list[int], upper: bool) -> None:
    columns = [CLASSES[i].upper() if upper else CLASSES[i] for i in order]  # any column order, any case
    with tempfile.TemporaryDirectory() as tmp:
        body = [[f"u{k}.wav", "train", *(row[i] for i in order)] for k, row in enumerate(rows)]
        records, report = read_manifest(_write_csv(Path(tmp), ["audio", "split", *columns], body), ",".join(CLASSES))
    assert [r.votes["primary"].tolist() for r in records] == [[float(x) for x in row] for row in rows]
    assert not report.skipped


@SETTINGS
@given(rows=ROWS, data=st.data())
def test_jsonl_vote_dicts_round_trip(rows: list[list[int]], data: st.DataObject) -> None:
    aliases = get_class_set("msp8").aliases  # corpus aliases map too: write some votes under an alias
    alias_of = {cls: a for a, cls in aliases.items() if len(a) > 1}
    with tempfile.TemporaryDirectory() as tmp:
        lines = []
        for k, row in enumerate(rows):
            names = [alias_of.get(c, c) if data.draw(st.booleans()) else c for c in CLASSES]
            votes = dict(zip(names, row, strict=True))
            lines.append(json.dumps({"audio": f"u{k}.wav", "split": "val", "votes": votes}))
            (Path(tmp) / f"u{k}.wav").write_bytes(b"")
        (Path(tmp) / "m.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        records, _ = read_manifest(Path(tmp) / "m.jsonl", "msp8", drop_out_of_set_votes=False)
    msp8 = get_class_set("msp8").classes
    for record, row in zip(records, rows, strict=True):
        expected = [float(dict(zip(CLASSES, row, strict=True)).get(c, 0)) for c in msp8]
        assert record.votes["primary"].tolist() == expected


@SETTINGS
@given(rows=ROWS, outside=OUTSIDE)
def test_outside_vote_column_rejects_or_is_counted(rows: list[list[int]], outside: list[int]) -> None:
    outside = (outside * len(rows))[: len(rows)]
    with tempfile.TemporaryDirectory() as tmp:
        body = [[f"u{k}.wav", "train", *row, extra] for k, (row, extra) in enumerate(zip(rows, outside, strict=True))]
        path = _write_csv(Path(tmp), ["audio", "split", *CLASSES, "Surprise"], body)
        kept, report = read_manifest(path, ",".join(CLASSES))
        dropped_kept, dropped = read_manifest(path, ",".join(CLASSES), drop_out_of_set_votes=True)
    # reject (default): exactly the rows with a Surprise vote are rejected, with the count in the reason
    assert [r.id for r in kept] == [f"u{k}" for k, extra in enumerate(outside) if extra == 0]
    assert {k: v.split(" (")[0] for k, v in report.skipped.items()} == {
        f"u{k}": f"votes outside class set custom: Surprise={extra}" for k, extra in enumerate(outside) if extra
    }
    # drop: every row kept with its in-set votes unchanged; the Surprise votes are all counted
    assert [r.votes["primary"].tolist() for r in dropped_kept] == [[float(x) for x in row] for row in rows]
    assert dropped.dropped_votes.get("Surprise", 0) == sum(outside)
    assert dropped.utterances_with_dropped_votes == sum(1 for x in outside if x)
