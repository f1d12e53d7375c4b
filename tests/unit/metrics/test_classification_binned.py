import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy
from sklearn.metrics import accuracy_score, f1_score

from ser_lightning.corpora.crema_d import read_tabulated_votes
from ser_lightning.metrics import AmbiguityBinnedMetrics
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
    metric = AmbiguityBinnedMetrics(num_classes=6)  # class 5 never occurs at all
    p6 = np.concatenate([preds, np.zeros((300, 1))], 1)
    t6 = np.concatenate([target, np.zeros((300, 1))], 1)
    metric.update(torch.tensor(p6), torch.tensor(t6), torch.zeros(300, dtype=torch.float64))
    got = metric.compute()
    true_labels = _first_max(t6)
    want = _sk_scores(p6.argmax(1), true_labels, 6)
    for key in want:
        assert got[key].item() == pytest.approx(want[key], abs=1e-6), key


def test_dominant_class_ties_toward_first():
    assert F.dominant_class(torch.tensor([[0.4, 0.4, 0.2], [0.1, 0.45, 0.45]])).tolist() == [0, 1]


def _first_max(rows):
    """Plurality with ties toward the first class, written out: the first index within 1e-9 of the maximum."""
    return np.array([int(np.flatnonzero(r >= r.max() - 1e-9)[0]) for r in rows])


def _reference_per_item(preds, target):
    """JS (bits), BC, R² and KL per utterance from scipy / numpy, independent of the package's functions."""
    p, q = preds / preds.sum(1, keepdims=True), target / target.sum(1, keepdims=True)
    r2 = []
    for a, b in zip(p, q, strict=True):
        r2.append(0.0 if np.std(a) == 0 or np.std(b) == 0 else np.corrcoef(a, b)[0, 1] ** 2)
    return {
        "js": np.array([jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q, strict=True)]),
        "bc": np.sqrt(p * q).sum(1),
        "r2": np.array(r2),
        "kl": np.array([scipy_entropy(b, np.maximum(a, 1e-10)) for a, b in zip(p, q, strict=True)]),
    }


def _reference_binned(preds, target, entropy, edges, c):
    """Every key of AmbiguityBinnedMetrics.compute() from numpy, scipy and sklearn, bins by a plain loop."""
    bins = np.array([sum(h > e for e in edges) for h in entropy])  # a value equal to an edge: lower bin
    per_item = _reference_per_item(preds, target)
    true_labels, pred_labels = _first_max(target), _first_max(preds)
    out = {}
    for prefix, sel in [("", np.ones(len(entropy), bool))] + [
        (f"bin{b + 1}/", bins == b) for b in range(len(edges) + 1)
    ]:
        out[prefix + "count"] = sel.sum()
        for name, vals in per_item.items():
            out[prefix + name] = vals[sel].mean() if sel.any() else math.nan
            out[prefix + name + "_median"] = np.median(vals[sel]) if sel.any() else math.nan
        for k, v in _sk_scores(pred_labels[sel], true_labels[sel], c).items() if sel.any() else []:
            out[prefix + k] = v
    return out


def test_binned_collection_matches_numpy_reference():
    preds, target = _votes(500, 4, 3)
    entropy = scipy_entropy(target, axis=1)
    edges = np.quantile(entropy, [1 / 3, 2 / 3])
    assert np.isin(edges, entropy).any()  # 8 votes: few distinct entropies, so an edge is a sample's value
    metric = AmbiguityBinnedMetrics(num_classes=4, bin_edges=edges.tolist())
    for idx in np.array_split(np.arange(500), 7):
        metric.update(torch.tensor(preds[idx]).float(), torch.tensor(target[idx]).float(), torch.tensor(entropy[idx]))
    got = metric.compute()
    want = _reference_binned(preds, target, entropy, edges, 4)
    assert set(want) <= set(got)
    for key, value in want.items():
        assert got[key].item() == pytest.approx(value, abs=1e-5, nan_ok=True), key
    assert sum(got[f"bin{b}/count"].item() for b in (1, 2, 3)) == 500
    assert metric.confusion().sum().item() == 500


def test_binned_empty_bin_and_edge_value():
    target = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    metric = AmbiguityBinnedMetrics(num_classes=2, bin_edges=[math.log(2), 10.0])
    metric.update(torch.tensor([[0.9, 0.1], [0.5, 0.5]]), target, torch.tensor([0.0, math.log(2)], dtype=torch.float64))
    out = metric.compute()
    # entropy log 2 equals the first edge -> lower bin
    assert out["bin1/count"].item() == 2
    assert out["bin3/count"].item() == 0
    assert math.isnan(out["bin3/js"].item())
    # hand numbers for bin 1: JS of (0.9, 0.1) vs (1, 0) and of two equal rows, in bits
    m = (0.95, 0.05)
    js0 = 0.5 * (0.9 * math.log2(0.9 / m[0]) + 0.1 * math.log2(0.1 / m[1])) + 0.5 * math.log2(1 / m[0])
    assert out["bin1/js"].item() == pytest.approx(js0 / 2, abs=1e-7)
    assert out["bin1/acc"].item() == 1.0


def test_binned_on_real_crema_d(crema_d_votes_path):
    table = read_tabulated_votes(crema_d_votes_path, "voice")
    target = table.counts / table.counts.sum(1, keepdims=True)
    preds = np.random.default_rng(7).dirichlet(np.ones(6), size=len(target))
    entropy = scipy_entropy(target, axis=1)
    edges = np.quantile(entropy, [1 / 3, 2 / 3])
    metric = AmbiguityBinnedMetrics(num_classes=6, bin_edges=edges.tolist())
    metric.update(torch.tensor(preds), torch.tensor(target), torch.tensor(entropy))
    got = metric.compute()
    want = _reference_binned(preds, target, entropy, edges, 6)
    for key, value in want.items():
        assert got[key].item() == pytest.approx(value, abs=1e-5), key


def test_bins_follow_the_stored_float64_entropy_not_the_float32_targets():
    votes = np.array([[4, 3, 2, 0, 0, 0], [9, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [4, 3, 2, 0, 0, 0]], dtype=float)
    target64 = votes / votes.sum(1, keepdims=True)
    stored = scipy_entropy(target64, axis=1)  # what the shards carry, and what the card's edges come from
    edge = float(stored[0])
    metric = AmbiguityBinnedMetrics(num_classes=6, bin_edges=[edge])
    t32 = torch.tensor(target64, dtype=torch.float32)
    metric.update(t32, t32, torch.tensor(stored))
    out = metric.compute()
    # rows 0 and 3 sit exactly on the edge -> lower bin, with the deterministic 9-0 row; the uniform row above
    assert (out["bin1/count"].item(), out["bin2/count"].item()) == (3, 1)
    with pytest.raises(ValueError, match="entropy"):
        metric.update(t32, t32, torch.tensor(stored[:2]))


def test_entropy_is_taken_as_given():
    """The metric bins on the entropy it is handed: swapping it moves samples between bins."""
    target = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    metric = AmbiguityBinnedMetrics(num_classes=2, bin_edges=[0.3])
    metric.update(target, target, torch.tensor([0.6, 0.0], dtype=torch.float32))
    out = metric.compute()
    assert out["bin1/acc"].item() == 1.0
    assert out["bin1/count"].item() == 1
    assert out["bin1/js"].item() == 0.0
    assert metric.bins[0].tolist() == [1, 0]
