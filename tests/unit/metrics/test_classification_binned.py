import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy
from sklearn.metrics import accuracy_score, f1_score

from ser_lightning.corpora.crema_d import read_tabulated_votes
from ser_lightning.labels import assign_bins, plurality, quantile_edges
from ser_lightning.metrics import AmbiguityBinnedMetrics, DominantClassScores
from ser_lightning.metrics import functional as F


def _votes(n, c, seed):
    rng = np.random.default_rng(seed)
    votes = rng.multinomial(8, rng.dirichlet(np.ones(c) * 0.5), size=n).astype(float)
    preds = rng.dirichlet(np.ones(c), size=n)
    return preds, votes / votes.sum(1, keepdims=True)


def _sk_scores(pred_labels, true_labels, c):
    labels = list(range(c))
    return {
        "acc": accuracy_score(true_labels, pred_labels),
        "f1": f1_score(true_labels, pred_labels, labels=labels, average="macro", zero_division=0),
        "wf1": f1_score(true_labels, pred_labels, labels=labels, average="weighted", zero_division=0),
    }


def test_dominant_class_scores_match_sklearn_with_absent_class():
    preds, target = _votes(300, 5, 0)
    preds[:, 4] = 0.0  # class 4 never predicted
    target = np.concatenate([target[:, :4], np.zeros((300, 1))], 1) + 0.0
    target[target.sum(1) == 0, 0] = 1.0
    metric = DominantClassScores(num_classes=6)  # class 5 never occurs at all
    p6 = np.concatenate([preds, np.zeros((300, 1))], 1)
    t6 = np.concatenate([target, np.zeros((300, 1))], 1)
    metric.update(torch.tensor(p6), torch.tensor(t6))
    got = metric.compute()
    true_labels, _ = plurality(t6)
    want = _sk_scores(p6.argmax(1), true_labels, 6)
    for key in want:
        assert got[key].item() == pytest.approx(want[key], abs=1e-6), key


def test_dominant_class_ties_toward_first():
    assert F.dominant_class(torch.tensor([[0.4, 0.4, 0.2], [0.1, 0.45, 0.45]])).tolist() == [0, 1]


def _reference_binned(preds, target, edges, c):
    h = scipy_entropy(target, axis=1)
    bins = assign_bins(h, edges)
    per_item = {
        name: fn(torch.tensor(preds), torch.tensor(target)).numpy() for name, fn in F.DISTRIBUTION_METRICS.items()
    }
    true_labels, _ = plurality(target)
    pred_labels = preds.argmax(1)
    out = {}
    for prefix, sel in [("", np.ones(len(h), bool))] + [(f"bin{b + 1}/", bins == b) for b in range(len(edges) + 1)]:
        out[prefix + "count"] = sel.sum()
        for name, vals in per_item.items():
            out[prefix + name] = vals[sel].mean() if sel.any() else math.nan
            out[prefix + name + "_median"] = np.median(vals[sel]) if sel.any() else math.nan
        for k, v in _sk_scores(pred_labels[sel], true_labels[sel], c).items() if sel.any() else []:
            out[prefix + k] = v
    return out


def test_binned_collection_matches_numpy_reference():
    preds, target = _votes(500, 4, 3)
    edges = quantile_edges(scipy_entropy(target, axis=1), 3)
    metric = AmbiguityBinnedMetrics(num_classes=4, bin_edges=edges.tolist())
    for idx in np.array_split(np.arange(500), 7):
        metric.update(torch.tensor(preds[idx]).float(), torch.tensor(target[idx]).float())
    got = metric.compute()
    want = _reference_binned(preds, target, edges, 4)
    assert set(want) <= set(got)
    for key, value in want.items():
        assert got[key].item() == pytest.approx(value, abs=1e-5, nan_ok=True), key
    assert sum(got[f"bin{b}/count"].item() for b in (1, 2, 3)) == 500
    assert metric.confusion().sum().item() == 500


def test_binned_empty_bin_and_edge_value():
    target = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    metric = AmbiguityBinnedMetrics(num_classes=2, bin_edges=[math.log(2), 10.0])
    metric.update(torch.tensor([[0.9, 0.1], [0.5, 0.5]]), target)
    out = metric.compute()
    # entropy log 2 equals the first edge -> lower bin
    assert out["bin1/count"].item() == 2
    assert out["bin3/count"].item() == 0
    assert math.isnan(out["bin3/js"].item())


def test_binned_on_real_crema_d(crema_d_votes_path):
    table = read_tabulated_votes(crema_d_votes_path, "voice")
    target = table.counts / table.counts.sum(1, keepdims=True)
    preds = np.random.default_rng(7).dirichlet(np.ones(6), size=len(target))
    edges = quantile_edges(scipy_entropy(target, axis=1), 3)
    metric = AmbiguityBinnedMetrics(num_classes=6, bin_edges=edges.tolist())
    metric.update(torch.tensor(preds), torch.tensor(target))
    got = metric.compute()
    want = _reference_binned(preds, target, edges, 6)
    for key, value in want.items():
        assert got[key].item() == pytest.approx(value, abs=1e-5), key


def test_float32_targets_on_a_float64_edge_go_to_the_lower_bin():
    votes = np.array([[4, 3, 2, 0, 0, 0], [9, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=float)
    target64 = votes / votes.sum(1, keepdims=True)
    edge = float(scipy_entropy(target64[0]))  # the card's edges come from float64 votes
    metric = AmbiguityBinnedMetrics(num_classes=6, bin_edges=[edge])
    metric.update(torch.tensor(target64, dtype=torch.float32), torch.tensor(target64, dtype=torch.float32))
    out = metric.compute()
    assert list(assign_bins(scipy_entropy(target64, axis=1), [edge])) == [0, 0, 1]
    assert (out["bin1/count"].item(), out["bin2/count"].item()) == (2, 1)
