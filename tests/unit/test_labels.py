import math
from collections import Counter

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from ser_lightning import labels as L


def test_class_sets_are_corpus_facts():
    assert L.CLASS_SETS["iemocap4"].classes == ("Anger", "Happiness", "Neutral", "Sadness")
    assert L.CLASS_SETS["msp8"].num_classes == 8
    assert L.CLASS_SETS["msp9"].classes[-1] == "Other"
    assert L.CLASS_SETS["cremad6"].classes == ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad")
    assert L.CLASS_SETS["iemocap4"].index("Neutral state") == 2
    assert L.CLASS_SETS["iemocap4"].index(" neutral STATE ") == 2
    assert L.CLASS_SETS["msp8"].index("Other") is None


def test_unknown_labels_reported_not_guessed():
    idx, unknown = L.CLASS_SETS["iemocap4"].map_labels(["Anger", "Frustration", "Neutral state", "Frustration"])
    assert idx == [0, 2]
    assert unknown == Counter({"Frustration": 2})


def test_count_votes_splits_multi_tag_rater():
    counts, unknown = L.CLASS_SETS["iemocap4"].count_votes([["Anger", "Sadness"], "Neutral state", ["Anger", "Other"]])
    np.testing.assert_allclose(counts, [1.0, 0.0, 1.0, 0.5])
    assert unknown == Counter({"Other": 1})


def test_get_class_set_custom_and_errors():
    cs = L.get_class_set("a,b,c")
    assert cs.classes == ("a", "b", "c")
    with pytest.raises(KeyError):
        L.get_class_set("nope")
    with pytest.raises(ValueError, match="distinct"):
        L.get_class_set(["a", "a"])


def test_votes_to_distribution_and_errors():
    np.testing.assert_allclose(L.votes_to_distribution([[1, 3], [0.5, 0.5]]), [[0.25, 0.75], [0.5, 0.5]])
    with pytest.raises(ValueError, match="at least one vote"):
        L.votes_to_distribution([0, 0])
    with pytest.raises(ValueError, match="non-negative"):
        L.votes_to_distribution([1, -1])


def test_entropy_matches_scipy():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(6) * 0.5, size=50)
    p[0] = [1, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(L.entropy(p), scipy_entropy(p, axis=-1), atol=1e-12)
    np.testing.assert_allclose(L.entropy(p, normalise=True), scipy_entropy(p, axis=-1) / math.log(6), atol=1e-12)


def test_normalized_entropy_on_numpy_and_torch():
    h = np.array([0.0, math.log(3) / 2, math.log(3), math.log(3) + 1e-12, math.nan])
    want = [0.0, 0.5, 1.0, 1.0]
    np.testing.assert_allclose(L.normalized_entropy(h, 3)[:4], want, atol=1e-12)
    assert math.isnan(L.normalized_entropy(h, 3)[4])
    got = L.normalized_entropy(torch.tensor(h), 3)
    np.testing.assert_allclose(got[:4].numpy(), want, atol=1e-12)
    assert math.isnan(got[4].item())
    assert L.entropy([0.25] * 4) == pytest.approx(math.log(4))


def test_bin_edges_quantile_and_width():
    ref = np.arange(1, 10, dtype=float)  # 1..9
    edges = L.quantile_edges(ref, 3)
    np.testing.assert_allclose(edges, np.quantile(ref, [1 / 3, 2 / 3]))
    assert len(L.quantile_edges(ref, 5)) == 4


def _fleiss_reference(n):
    """Textbook Fleiss' kappa for a constant number of raters (Fleiss 1971)."""
    n = np.asarray(n, float)
    big_n, r = n.shape[0], n.sum(1)[0]
    p_j = n.sum(0) / (big_n * r)
    p_i = (np.sum(n * n, 1) - r) / (r * (r - 1))
    pbar, pe = p_i.mean(), np.sum(p_j**2)
    return (pbar - pe) / (1 - pe)


def test_fleiss_kappa_wikipedia_example():
    # the worked example of Fleiss' kappa (10 items, 14 raters, 5 categories): kappa = 0.210
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    res = L.fleiss_kappa(table)
    assert res.kappa == pytest.approx(0.20993, abs=1e-5)
    assert res.kappa == pytest.approx(_fleiss_reference(table))
    assert (res.items, res.excluded) == (10, 0)


def test_fleiss_kappa_variable_raters_and_exclusion():
    table = np.array([[3, 0, 0], [1, 1, 0], [0, 2, 2], [1, 0, 0], [0.5, 0.5, 2]])
    res = L.fleiss_kappa(table)
    assert (res.items, res.excluded) == (4, 1)
    kept = table[[0, 1, 2, 4]]
    r = kept.sum(1)
    p_i = ((kept**2).sum(1) - r) / (r * (r - 1))
    p_j = kept.sum(0) / r.sum()
    expected = (p_i.mean() - (p_j**2).sum()) / (1 - (p_j**2).sum())
    assert res.kappa == pytest.approx(expected)


def test_plurality_ties_toward_first_class():
    lab, ties = L.plurality([[1, 3, 3], [2, 0, 0], [1, 1, 1], [0.5, 0.25, 0.5]])
    assert list(lab) == [1, 0, 0, 0]
    assert ties == 3
