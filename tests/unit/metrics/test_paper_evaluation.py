"""The paper's evaluation: width bins of H / log C (``[lo, hi)``), UAR and per-class F1, against sklearn and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from ser_lightning.metrics import WIDTH_EDGES, AmbiguityBinnedMetrics, width_bins
from ser_lightning.metrics import functional as F

CLASSES = ["Angry", "Sad", "Happy", "Neutral", "Other"]


def _first_max(rows: np.ndarray) -> np.ndarray:
    """Plurality with ties toward the first class: the first index within 1e-9 of the row's maximum."""
    return np.array([int(np.flatnonzero(r >= r.max() - 1e-9)[0]) for r in rows])


def _width_bin(h_nats: float, c: int) -> int:
    """Paper's width bin written out: [0, 1/3) -> 0, [1/3, 2/3) -> 1, [2/3, 1] -> 2 on H / ln C."""
    h = h_nats / math.log(c)
    return 0 if h < 1 / 3 else 1 if h < 2 / 3 else 2


def _sk(true: np.ndarray, pred: np.ndarray, c: int) -> dict[str, float]:
    labels = list(range(c))
    return {
        "acc": accuracy_score(true, pred),
        "f1": f1_score(true, pred, labels=labels, average="macro", zero_division=0),
        "wf1": f1_score(true, pred, labels=labels, average="weighted", zero_division=0),
        "uar": balanced_accuracy_score(true, pred),  # mean recall over the classes present in the targets
    }


def _data(n: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    votes = rng.multinomial(7, rng.dirichlet(np.ones(c) * 0.4), size=n).astype(float)
    votes[:, c - 1] = np.where(rng.random(n) < 0.1, 0.0, votes[:, c - 1])  # the last class rarer
    votes[votes.sum(1) == 0, 0] = 1.0
    target = votes / votes.sum(1, keepdims=True)
    preds = rng.dirichlet(np.ones(c), size=n)
    return preds, target, scipy_entropy(target, axis=1)


@pytest.mark.filterwarnings("ignore::UserWarning")  # sklearn: y_pred holds a class absent from y_true in a bin
def test_width_bins_uar_and_per_class_f1_match_sklearn():
    c = len(CLASSES)
    preds, target, ent = _data(400, c, 5)
    metric = AmbiguityBinnedMetrics(c, [0.5, 1.0], classes=CLASSES, width_edges=WIDTH_EDGES)
    for idx in np.array_split(np.arange(len(ent)), 6):
        metric.update(torch.tensor(preds[idx]).float(), torch.tensor(target[idx]).float(), torch.tensor(ent[idx]))
    got = {k: v.item() for k, v in metric.compute().items()}
    true, pred = _first_max(target), _first_max(preds)
    per_class = f1_score(true, pred, labels=list(range(c)), average=None, zero_division=0)
    for i, name in enumerate(CLASSES):
        assert got[f"f1/{name}"] == pytest.approx(per_class[i], abs=1e-6), name
    assert got["uar"] == pytest.approx(balanced_accuracy_score(true, pred), abs=1e-6)
    wbin = np.array([_width_bin(h, c) for h in ent])
    assert len(set(wbin)) == 3  # every width bin is populated
    js = np.array([jensenshannon(p, q, base=2) ** 2 for p, q in zip(preds, target, strict=True)])
    for b in range(3):
        sel = wbin == b
        assert got[f"wbin{b + 1}/count"] == sel.sum()
        assert got[f"wbin{b + 1}/js"] == pytest.approx(js[sel].mean(), abs=1e-5)
        for key, value in _sk(true[sel], pred[sel], c).items():
            assert got[f"wbin{b + 1}/{key}"] == pytest.approx(value, abs=1e-6), (b, key)
    tertile = np.array([sum(h > e for e in (0.5, 1.0)) for h in ent])  # (lo, hi]: an edge value goes lower
    for b in range(3):
        sel = tertile == b
        assert got[f"bin{b + 1}/uar"] == pytest.approx(balanced_accuracy_score(true[sel], pred[sel]), abs=1e-6)
    assert "wbin4/count" not in got


def test_uar_and_per_class_f1_by_hand():
    # targets 0 0 0 1 2 2, predictions 0 1 2 1 2 0; class 3 ("Other") never occurs nor is predicted
    target = torch.eye(4)[[0, 0, 0, 1, 2, 2]]
    preds = torch.eye(4)[[0, 1, 2, 1, 2, 0]] * 0.7 + 0.075
    metric = AmbiguityBinnedMetrics(4, classes=["a", "b", "c", "Other"])
    metric.update(preds, target, torch.zeros(6, dtype=torch.float64))
    out = {k: v.item() for k, v in metric.compute().items()}
    # recall: a 1/3, b 1/1, c 1/2; Other has no support and stays out of the mean
    assert out["uar"] == pytest.approx((1 / 3 + 1 + 1 / 2) / 3)
    # F1 = 2 tp / (support + predicted): a 2/(3+2), b 2/(1+2), c 2/(2+2), Other 0
    want = {"a": 2 / 5, "b": 2 / 3, "c": 1 / 2, "Other": 0.0}
    for name, value in want.items():
        assert out[f"f1/{name}"] == pytest.approx(value), name
    assert out["f1"] == pytest.approx(sum(want.values()) / 4)  # macro-F1 still over the whole class set
    assert "wbin1/count" not in out  # no width bins unless asked for


def test_width_bin_membership_at_exactly_one_third_two_thirds_and_one():
    c = 8
    # uniform over 1, 2, 4 and 8 of 8 classes: H / ln 8 = 0, 1/3, 2/3, 1 exactly in arithmetic
    ent = torch.tensor([0.0, math.log(2), math.log(4), math.log(8)], dtype=torch.float64)
    assert width_bins(ent, c).tolist() == [0, 1, 2, 2]
    # H given as h x ln C for h on, and a hair below, each edge; 1 itself and a rounding above it stay in bin 3
    for num_classes in (3, 8, 9):
        h = torch.tensor([1 / 3, 2 / 3, 1 / 3 - 1e-6, 2 / 3 - 1e-6, 1.0, 1 + 1e-12, 0.0], dtype=torch.float64)
        assert width_bins(h * math.log(num_classes), num_classes).tolist() == [1, 2, 0, 1, 2, 2, 0], num_classes


def test_width_bins_normalise_by_log_c():
    ent = torch.tensor([math.log(3)], dtype=torch.float64)  # uniform over 3 classes
    # C = 3: h = 1 (bin 3); C = 9: h = 1/2 (bin 2); C = 30: h = ln 3 / ln 30 = 0.323 (bin 1)
    assert [width_bins(ent, c).item() for c in (3, 9, 30)] == [2, 1, 0]


def test_width_edges_lower_closed_while_tertile_edges_stay_upper_closed():
    c = 8
    edges = [math.log(2), math.log(4)]  # nats edges that coincide with the width edges 1/3 and 2/3 of ln 8
    target = torch.tensor([[0.5, 0.5] + [0.0] * 6, [0.25] * 4 + [0.0] * 4, [1.0] + [0.0] * 7])
    metric = AmbiguityBinnedMetrics(c, edges, width_edges=WIDTH_EDGES)
    metric.update(target, target, torch.tensor([math.log(2), math.log(4), 0.0], dtype=torch.float64))
    out = {k: v.item() for k, v in metric.compute().items()}
    assert [out[f"bin{b}/count"] for b in (1, 2, 3)] == [2, 1, 0]  # (lo, hi]: log 2 -> bin 1, log 4 -> bin 2
    assert [out[f"wbin{b}/count"] for b in (1, 2, 3)] == [1, 1, 1]  # [lo, hi): 1/3 -> wbin 2, 2/3 -> wbin 3
    assert math.isnan(out["bin3/uar"])  # an empty bin scores NaN
    assert math.isnan(out["bin3/f1"])


def test_nonfinite_row_makes_uar_and_per_class_f1_nan():
    target = torch.eye(3)[[0, 1, 2, 1]]
    preds = target.clone()
    preds[3, 0] = float("nan")
    metric = AmbiguityBinnedMetrics(3, classes=["x", "y", "Other"], width_edges=WIDTH_EDGES)
    metric.update(preds, target, torch.zeros(4, dtype=torch.float64))
    out = metric.compute()
    for key in ("uar", "f1/x", "f1/y", "f1/Other", "wbin1/uar"):
        assert math.isnan(out[key].item()), key


def test_classification_scores_report_uar():
    preds, target, _ = _data(200, 4, 9)
    metric = AmbiguityBinnedMetrics(num_classes=4)
    metric.update(torch.tensor(preds), torch.tensor(target), torch.zeros(len(preds), dtype=torch.float64))
    want = balanced_accuracy_score(_first_max(target), _first_max(preds))
    assert metric.compute()["uar"].item() == pytest.approx(want, abs=1e-6)
    confmat = torch.tensor([[2, 1], [0, 0]])  # class 1 has no support
    assert F.classification_scores(confmat)["uar"].item() == pytest.approx(2 / 3)
    assert F.f1_per_class(confmat).tolist() == pytest.approx([2 * 2 / (3 + 2), 0.0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"classes": ["a", "b"]}, "classes"),
        ({"classes": ["a", "a", "b"]}, "classes"),
        ({"width_edges": [2 / 3, 1 / 3]}, "width_edges"),
        ({"width_edges": [0.5, 1.0]}, "width_edges"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AmbiguityBinnedMetrics(3, **kwargs)
