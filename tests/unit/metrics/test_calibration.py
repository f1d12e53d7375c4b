"""ECE, reliability bins and the coverage curve against numpy written out by hand, and the report's outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy

from ser_lightning.metrics.calibration import expected_calibration_error, reliability_bins, selective_scores
from ser_lightning.runs.metrics_json import calibration_entries
from ser_lightning.runs.names import RELIABILITY_FIGURE


def _data(n: int = 300, c: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    preds = rng.dirichlet(np.full(c, 0.7), size=n)
    votes = rng.integers(0, 4, size=(n, c)) + np.eye(c)[rng.integers(0, c, n)]
    return preds, votes / votes.sum(1, keepdims=True)


def _ece_numpy(p: np.ndarray, q: np.ndarray, bins: int = 10) -> float:
    conf = p.max(1)
    correct = p.argmax(1) == q.argmax(1)
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        sel = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if sel.any():
            total += sel.sum() / len(p) * abs(correct[sel].mean() - conf[sel].mean())
    return total


def test_ece_and_bins_match_numpy():
    p, q = _data()
    got = expected_calibration_error(torch.tensor(p), torch.tensor(q))
    assert got == pytest.approx(_ece_numpy(p, q), abs=1e-12)
    bins = reliability_bins(torch.tensor(p), torch.tensor(q))
    assert bins["count"].sum() == len(p)
    assert bool(torch.isnan(bins["accuracy"][0]))  # confidence >= 1/5: the first bin stays empty


def test_ece_by_hand():
    # confidence 0.8 right 3 of 4 times (gap 0.05), confidence 0.55 right once (gap 0.45): (4 x 0.05 + 0.45) / 5
    p = torch.tensor([[0.8, 0.2]] * 4 + [[0.55, 0.45]])
    q = torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] + [[1.0, 0.0]])
    assert expected_calibration_error(p, q) == pytest.approx((4 * 0.05 + 0.45) / 5)
    assert expected_calibration_error(torch.tensor([[0.75, 0.25]] * 4), q[:4]) == pytest.approx(0.0)
    on_edges = torch.tensor([[0.3, 0.7], [0.7, 0.3], [0.6, 0.4], [0.9, 0.1]], dtype=torch.float64)
    assert reliability_bins(on_edges, on_edges)["count"].tolist() == [0, 0, 0, 0, 0, 1, 2, 0, 1, 0]  # (lo, hi]


def test_coverage_curve_keeps_the_lowest_predicted_entropy():
    p, q = _data(n=97)
    order = np.argsort(scipy_entropy(p, axis=1), kind="stable")
    js = jensenshannon(p, q, base=2, axis=1) ** 2
    correct = (p.argmax(1) == q.argmax(1)).astype(float)
    got = selective_scores(torch.tensor(p), torch.tensor(q))
    assert sorted(got) == pytest.approx([0.1 * k for k in range(1, 11)])
    for coverage, scores in got.items():
        k = math.ceil(round(coverage * 97, 9))
        assert scores["count"] == k
        assert scores["acc"] == pytest.approx(correct[order[:k]].mean())
        assert scores["js"] == pytest.approx(js[order[:k]].mean(), rel=1e-9)
    assert got[1.0]["acc"] == pytest.approx(correct.mean())


def test_non_finite_rows_score_nan_and_bad_input_raises():
    p, q = _data(n=10)
    p[2, 0] = np.nan
    assert math.isnan(expected_calibration_error(torch.tensor(p), torch.tensor(q)))
    assert math.isnan(selective_scores(torch.tensor(p), torch.tensor(q))[0.5]["acc"])
    with pytest.raises(ValueError, match="coverages"):
        selective_scores(torch.tensor(q), torch.tensor(q), coverages=[0.0])
    with pytest.raises(ValueError, match="num_bins"):
        reliability_bins(torch.tensor(q), torch.tensor(q), num_bins=0)


def test_report_writes_the_entries_the_png_and_the_tensorboard_figure(tmp_path):
    p, q = _data(n=50)
    records = [
        {"id": f"u{i}", "target": t.tolist(), "target_entropy": 0.0, "probabilities": s.tolist()}
        for i, (s, t) in enumerate(zip(p.astype(np.float32), q.astype(np.float32), strict=True))
    ]

    class Writer:
        tags: list[str] = []

        def add_figure(self, tag, figure, close=True):
            self.tags.append(tag)

    writer = Writer()
    out = calibration_entries(records, tmp_path, writer)
    assert out["test/ece"] == pytest.approx(_ece_numpy(p.astype(np.float32), q.astype(np.float32)), abs=1e-6)
    assert {f"test/coverage{k}/{m}" for k in range(10, 101, 10) for m in ("acc", "js")} <= set(out)
    assert (tmp_path / RELIABILITY_FIGURE).stat().st_size > 0
    assert writer.tags == ["test/reliability"]
    assert calibration_entries([], tmp_path) == {}
