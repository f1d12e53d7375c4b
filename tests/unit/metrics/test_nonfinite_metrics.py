"""Non-finite predictions never turn into finite-looking scores (argmax-of-NaN class 0, constant-vector R² 0)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from ser_lightning.metrics import AmbiguityBinnedMetrics
from ser_lightning.metrics import functional as F

PREDS = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.6, 0.3, 0.1], [0.3, 0.3, 0.4]])
TARGET = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 0.5], [0.2, 0.8, 0.0], [0.0, 0.0, 1.0]])
ENTROPY = torch.tensor([0.0, 0.0, math.log(2), 0.5, 0.0], dtype=torch.float64)
EDGES = [0.4]  # bin 1: rows 0, 1, 4; bin 2: rows 2, 3


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_every_per_item_score_of_a_nonfinite_row_is_nan(bad):
    preds = PREDS.clone()
    preds[1, 0] = bad
    for name, fn in F.DISTRIBUTION_METRICS.items():
        scores = fn(preds, TARGET)
        assert math.isnan(scores[1].item()), name
        assert torch.isfinite(scores[[0, 2, 3, 4]]).all(), name
    metric = AmbiguityBinnedMetrics(num_classes=3)
    metric.update(preds, TARGET, ENTROPY)
    assert math.isnan(metric.compute()["r2"].item())


def test_binned_metrics_report_nan_and_count_for_nonfinite_rows():
    preds = PREDS.clone()
    preds[4] = float("nan")  # bin 1
    metric = AmbiguityBinnedMetrics(num_classes=3, bin_edges=EDGES)
    metric.update(preds, TARGET, ENTROPY)
    out = {k: v.item() for k, v in metric.compute().items()}
    assert (out["count"], out["nonfinite"], out["bin1/nonfinite"], out["bin2/nonfinite"]) == (5, 1, 1, 0)
    for prefix in ("", "bin1/"):
        for key in ("js", "bc", "r2", "kl", "js_median", "r2_median", "acc", "f1", "wf1"):
            assert math.isnan(out[prefix + key]), prefix + key
    # bin 2 is untouched: its scores from sklearn on rows 2 and 3 (pred 2, 0; plurality 1 (tie -> first), 1)
    assert out["bin2/acc"] == accuracy_score([1, 1], [2, 0]) == 0.0
    assert out["bin2/f1"] == pytest.approx(f1_score([1, 1], [2, 0], labels=[0, 1, 2], average="macro", zero_division=0))
    assert np.isfinite(out["bin2/js"])
    assert np.isfinite(out["bin2/r2"])
    assert metric.confusion().sum().item() == 4  # the NaN row has no dominant class to count


def test_binned_metrics_without_nonfinite_rows_count_zero():
    metric = AmbiguityBinnedMetrics(num_classes=3, bin_edges=EDGES)
    metric.update(PREDS, TARGET, ENTROPY)
    out = metric.compute()
    assert out["nonfinite"].item() == 0
    assert out["acc"].item() == pytest.approx(accuracy_score([0, 1, 1, 1, 2], [0, 1, 2, 0, 2]))


def test_classification_scores_are_nan_after_a_nonfinite_row():
    preds = PREDS.clone()
    preds[0] = float("nan")
    metric = AmbiguityBinnedMetrics(num_classes=3)
    metric.update(preds, TARGET, ENTROPY)
    out = metric.compute()
    assert all(math.isnan(out[k].item()) for k in ("acc", "f1", "wf1", "uar"))
    assert out["nonfinite"].item() == 1
    assert metric.confusion().sum().item() == 4
    clean = AmbiguityBinnedMetrics(num_classes=3)
    clean.update(PREDS, TARGET, ENTROPY)
    assert clean.compute()["acc"].item() == pytest.approx(0.6)
