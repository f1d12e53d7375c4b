"""Bootstrap intervals against a numpy/scipy/sklearn reference on the same resamples, the analytic interval of a
mean on a large sample, and speed (10k utterances x 10k resamples)."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from ser_lightning.metrics import WIDTH_EDGES, AmbiguityBinnedMetrics
from ser_lightning.metrics.bootstrap import (
    CI_METRICS,
    ambiguity_groups,
    bootstrap_intervals,
    bootstrap_statistics,
    percentile_interval,
    resample_indices,
)
from ser_lightning.runs.metrics_json import bootstrap_entries


def _data(n: int, c: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    votes = rng.integers(0, 4, size=(n, c)).astype(float) + np.eye(c)[rng.integers(0, c, n)]  # ties included
    preds = rng.dirichlet(np.ones(c), size=n)
    return torch.tensor(preds, dtype=torch.float32), torch.tensor(votes / votes.sum(1, keepdims=True)).float()


def _per_item(p: np.ndarray, q: np.ndarray) -> dict[str, np.ndarray]:
    """Per-utterance JS (bits), BC, R² and KL(q ‖ p) written out with numpy / scipy."""
    pc, qc = p - p.mean(1, keepdims=True), q - q.mean(1, keepdims=True)
    var = (pc**2).sum(1) * (qc**2).sum(1)
    r2 = np.divide((pc * qc).sum(1) ** 2, var, out=np.zeros_like(var), where=var > 0)  # constant vector: 0
    return {
        "js": jensenshannon(p, q, base=2, axis=1) ** 2,
        "bc": np.sqrt(p * q).sum(1),
        "r2": r2,
        "kl": scipy_entropy(q, p, axis=1),
    }


def _reference(items: dict[str, np.ndarray], true: np.ndarray, pred: np.ndarray, c: int) -> dict[str, float]:
    """Every metric of one resample: means of the per-utterance scores, sklearn's classification scores."""
    labels = list(range(c))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn: predicted classes absent from the targets
        uar = balanced_accuracy_score(true, pred)
    return {
        **{name: float(v.mean()) for name, v in items.items()},
        "acc": accuracy_score(true, pred),
        "f1": f1_score(true, pred, labels=labels, average="macro", zero_division=0),
        "wf1": f1_score(true, pred, labels=labels, average="weighted", zero_division=0),
        "uar": uar,
    }


def test_intervals_match_a_numpy_reference_on_the_same_resamples():
    preds, target = _data(60)
    num_samples, seed = 200, 7
    p = preds.double().numpy()
    p /= p.sum(1, keepdims=True)
    q = target.double().numpy()
    q /= q.sum(1, keepdims=True)
    rows = torch.cat(list(resample_indices(60, num_samples, seed))).numpy()
    assert rows.shape == (num_samples, 60)
    items, true, pred = _per_item(p, q), q.argmax(1), p.argmax(1)  # argmax: ties to the first class
    ref = [_reference({k: v[r] for k, v in items.items()}, true[r], pred[r], 4) for r in rows]
    stats = bootstrap_statistics(preds, target, num_samples, seed)
    got = bootstrap_intervals(preds, target, num_samples, seed)
    for name in CI_METRICS:
        values = np.array([r[name] for r in ref])
        np.testing.assert_allclose(stats[name].numpy(), values, rtol=1e-6, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(got[name], np.percentile(values, [2.5, 97.5]), rtol=1e-6, atol=1e-9, err_msg=name)


def test_seeded_reproducible_and_seed_dependent():
    preds, target = _data(200)
    assert bootstrap_intervals(preds, target, 500, seed=3) == bootstrap_intervals(preds, target, 500, seed=3)
    assert bootstrap_intervals(preds, target, 500, seed=3) != bootstrap_intervals(preds, target, 500, seed=4)


def test_interval_of_a_mean_matches_the_analytic_interval_on_a_large_sample():
    preds, target = _data(10_000, seed=1)
    stats = bootstrap_statistics(preds, target, 2_000, seed=0)
    got = bootstrap_intervals(preds, target, 2_000, seed=0)
    js = _per_item(preds.double().numpy(), target.double().numpy())["js"]
    acc = (preds.numpy().argmax(1) == target.numpy().argmax(1)).astype(float)
    for name, x in (("js", js), ("acc", acc)):
        half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)
        lo, hi = got[name]
        assert lo == pytest.approx(x.mean() - half, abs=0.1 * half), name
        assert hi == pytest.approx(x.mean() + half, abs=0.1 * half), name
        assert float(stats[name].std()) == pytest.approx(half / 1.96, rel=0.1)


def test_ten_thousand_utterances_times_ten_thousand_resamples_take_seconds():
    preds, target = _data(10_000, seed=2)
    start = time.perf_counter()
    got = bootstrap_intervals(preds, target, 10_000, seed=0)
    assert time.perf_counter() - start < 20.0  # ~4 s on 2 shared CPU cores
    assert all(lo <= hi for lo, hi in got.values())


def test_non_finite_rows_give_nan_intervals_and_bad_input_raises():
    preds, target = _data(10)
    preds[3, 0] = float("nan")
    assert all(math.isnan(lo) and math.isnan(hi) for lo, hi in bootstrap_intervals(preds, target, 50).values())
    with pytest.raises(ValueError, match="level"):
        percentile_interval(torch.zeros(3), level=1.5)
    with pytest.raises(ValueError, match="at least one"):
        next(resample_indices(0, 10))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        bootstrap_statistics(preds, target[:5])


def test_per_bin_intervals_resample_each_bins_utterances_binned_as_the_metrics():
    preds, target = _data(120, seed=5)
    ent = torch.tensor(scipy_entropy(target.double().numpy(), axis=1))
    edges = [float(ent.quantile(1 / 3)), float(ent.quantile(2 / 3))]
    metric = AmbiguityBinnedMetrics(4, edges, width_edges=WIDTH_EDGES)
    metric.update(preds, target, ent)
    want = metric.compute()
    groups = ambiguity_groups(ent, 4, edges)
    for name, sel in groups.items():
        assert int(sel.sum()) == int(want[f"{name}/count"]), name
        if sel.any():
            lo, hi = bootstrap_intervals(preds[sel], target[sel], 400, seed=1)["js"]
            assert lo - 1e-6 <= float(want[f"{name}/js"]) <= hi + 1e-6, name

    records = [
        {"id": f"u{i}", "target": t.tolist(), "target_entropy": float(h), "probabilities": p.tolist()}
        for i, (p, t, h) in enumerate(zip(preds, target, ent, strict=True))
    ]
    found = bootstrap_entries(records, 400, seed=1, bin_edges=edges)
    assert found["test/js_ci95"] == pytest.approx(list(bootstrap_intervals(preds, target, 400, seed=1)["js"]))
    sel = groups["bin2"]
    assert found["test/bin2/f1_ci95"] == pytest.approx(list(bootstrap_intervals(preds[sel], target[sel], 400, 1)["f1"]))
    assert {k for k in found if k.startswith("test/wbin")} <= {
        f"test/wbin{b}/{m}_ci95" for b in (1, 2, 3) for m in CI_METRICS
    }
    assert bootstrap_entries([], 400) == {}
