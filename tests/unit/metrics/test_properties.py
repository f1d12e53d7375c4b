"""Property-based tests (hypothesis) of the distribution maths and metrics: bounds, symmetry, invariances.

Distributions are drawn with exact zeros (as vote distributions have) and tiny probabilities; every property is a
mathematical fact of the definition (or scipy's value), never the function's own output on other inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy

from ser_lightning.metrics import AmbiguityBinnedMetrics
from ser_lightning.metrics.functional import DISTRIBUTION_METRICS, dominant_class
from ser_lightning.metrics.functional import probability as P

FAST = settings(max_examples=40, deadline=None, database=None)
ATOL = 1e-9
WEIGHTS = st.one_of(st.just(0.0), st.floats(1e-6, 1.0), st.floats(1e-300, 1e-12))  # zeros, normal, underflowing


@st.composite
def raw_rows(draw: st.DrawFn, n: int, c: int) -> np.ndarray:
    """Non-negative ``(n, c)`` weights with at least one positive entry per row (not normalised)."""
    x = draw(arrays(np.float64, (n, c), elements=WEIGHTS))
    x[x.sum(1) == 0, 0] = 1.0
    return x


@st.composite
def pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Raw weights, their distributions (predictions and targets) and a permutation of the classes."""
    c = draw(st.integers(2, 8))
    n = draw(st.integers(1, 6))
    raw_p, raw_q = draw(raw_rows(n, c)), draw(raw_rows(n, c))
    perm = draw(st.permutations(range(c)))
    return raw_p, raw_q, _norm(raw_p), _norm(raw_q), perm


def _norm(x: np.ndarray) -> np.ndarray:
    return x / x.sum(1, keepdims=True)


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _scores(p: np.ndarray, q: np.ndarray) -> dict[str, np.ndarray]:
    return {name: fn(_t(p), _t(q)).numpy() for name, fn in DISTRIBUTION_METRICS.items()}


@FAST
@given(pairs(), st.floats(1e-3, 1e3), st.floats(1e-3, 1e3))
def test_metrics_renormalise_their_inputs(case, a, b):
    # scaled distributions, not the raw weights: a row summing below 1e-10 is left as it is (the evaluation
    # code's guard for all-zero rows), which hypothesis finds at once
    _, _, p, q, _ = case
    scaled, normalised = _scores(a * p, b * q), _scores(p, q)
    for name in DISTRIBUTION_METRICS:
        np.testing.assert_allclose(scaled[name], normalised[name], atol=1e-7, err_msg=name)


@FAST
@given(pairs())
def test_js_is_symmetric_in_bits_bounded_and_matches_scipy(case):
    _, _, p, q, _ = case
    js, js_swapped = _scores(p, q)["js"], _scores(q, p)["js"]
    np.testing.assert_allclose(js, js_swapped, atol=1e-12)
    assert np.all((js >= 0) & (js <= 1 + 1e-12))
    want = np.array([jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q, strict=True)])
    np.testing.assert_allclose(js, np.nan_to_num(want), atol=1e-7)  # scipy: sqrt of a rounding-negative -> nan


@FAST
@given(pairs())
def test_identical_distributions_score_perfectly(case):
    _, _, p, _, _ = case
    same = _scores(p, p)
    np.testing.assert_allclose(same["js"], 0.0, atol=ATOL)
    np.testing.assert_allclose(same["kl"], 0.0, atol=ATOL)
    np.testing.assert_allclose(same["bc"], 1.0, atol=ATOL)
    constant = np.isclose(p.std(1), 0.0, atol=1e-12)
    np.testing.assert_allclose(same["r2"][~constant], 1.0, atol=1e-6)


@FAST
@given(pairs())
def test_bc_r2_kl_bounds(case):
    _, _, p, q, _ = case
    s = _scores(p, q)
    assert np.all((s["bc"] >= 0) & (s["bc"] <= 1))
    assert np.all((s["r2"] >= 0) & (s["r2"] <= 1))
    assert np.all(s["kl"] >= 0)  # Gibbs' inequality
    assert np.all(np.isfinite(s["kl"]))  # predicted zeros are floored, never log 0
    np.testing.assert_allclose(s["bc"], _scores(q, p)["bc"], atol=1e-12)
    np.testing.assert_allclose(s["r2"], _scores(q, p)["r2"], atol=1e-9)


@FAST
@given(pairs())
def test_joint_class_permutation_changes_no_distribution_score(case):
    _, _, p, q, perm = case
    before, after = _scores(p, q), _scores(p[:, perm], q[:, perm])
    for name in DISTRIBUTION_METRICS:
        np.testing.assert_allclose(before[name], after[name], atol=1e-9, err_msg=name)


@FAST
@given(pairs())
def test_entropy_bounds_permutation_and_scipy(case):
    _, _, p, _, perm = case
    c = p.shape[1]
    h = P.entropy(_t(p)).numpy()
    assert np.all((h >= 0) & (h <= math.log(c) + 1e-12))
    np.testing.assert_allclose(h, scipy_entropy(p, axis=1), atol=1e-9)
    np.testing.assert_allclose(P.entropy(_t(p[:, perm])).numpy(), h, atol=1e-12)
    np.testing.assert_allclose(P.entropy(_t(p), base=c).numpy(), h / math.log(c), atol=1e-12)
    assert P.entropy(torch.full((c,), 1.0 / c, dtype=torch.float64)).item() == pytest.approx(math.log(c))


@FAST
@given(pairs())
def test_probability_js_and_kl_in_nats(case):
    _, _, p, q, _ = case
    js = P.js_divergence_per_item(_t(p), _t(q)).numpy()
    assert np.all((js >= 0) & (js <= math.log(2) + 1e-12))
    np.testing.assert_allclose(js, P.js_divergence_per_item(_t(q), _t(p)).numpy(), atol=1e-12)
    q_pos = _norm(q + 1e-3)  # KL(p || q) is finite only where q > 0 wherever p > 0
    kl = P.kl_divergence_per_item(_t(p), _t(q_pos).log()).numpy()
    assert np.all(kl >= 0)
    np.testing.assert_allclose(kl, scipy_entropy(p, q_pos, axis=1), atol=1e-9)


def _untied(x: np.ndarray) -> np.ndarray:
    """Rows whose largest entry is unique by a clear margin (ties break toward the first class, not a symmetry)."""
    x = x.copy()
    x[np.arange(len(x)), x.argmax(1)] += 0.5
    return _norm(x)


@FAST
@given(pairs())
def test_dominant_class_follows_the_permutation(case):
    _, _, p, _, perm = case
    p = _untied(p)
    inverse = np.argsort(perm)
    got = dominant_class(_t(p[:, perm])).numpy()
    np.testing.assert_array_equal(got, inverse[p.argmax(1)])


@FAST
@given(pairs(), st.lists(st.floats(0.0, 2.0), min_size=0, max_size=3))
def test_binned_metrics_invariant_under_a_joint_class_permutation(case, edges):
    _, _, p, q, perm = case
    p, q = _untied(p), _untied(q)
    c = p.shape[1]
    entropy = torch.tensor(scipy_entropy(q, axis=1))
    edges = sorted(edges)

    def run(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        metric = AmbiguityBinnedMetrics(num_classes=c, bin_edges=edges)
        metric.update(_t(a), _t(b), entropy)
        return {k: float(v) for k, v in metric.compute().items()}

    before, after = run(p, q), run(p[:, perm], q[:, perm])
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert after[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    assert sum(before[f"bin{b + 1}/count"] for b in range(len(edges) + 1)) == before["count"] == len(p)
    assert before["nonfinite"] == 0
    for key in ("acc", "f1", "wf1"):
        assert 0 <= before[key] <= 1, key
