import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy

from ser_lightning.corpora.crema_d import read_tabulated_votes
from ser_lightning.metrics import AmbiguityBinnedMetrics
from ser_lightning.metrics import functional as F


def _random_pairs(n=200, c=6, seed=0, zeros=True):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(c) * 0.7, size=n)
    q = rng.dirichlet(np.ones(c) * 0.7, size=n)
    if zeros:
        q[rng.random((n, c)) < 0.3] = 0.0  # vote distributions have many zeros
        q[q.sum(1) == 0, 0] = 1.0
        p[:5] = np.eye(c)[rng.integers(0, c, 5)]  # one-hot predictions
    return p, q


def ref_js(p, q):
    # scipy returns the square root of the divergence
    return np.array([jensenshannon(a, b, base=2) ** 2 for a, b in zip(p, q, strict=True)])


def ref_bc(p, q):
    p, q = p / p.sum(1, keepdims=True), q / q.sum(1, keepdims=True)
    return np.sqrt(p * q).sum(1)


def ref_r2(p, q):
    out = []
    for a, b in zip(p, q, strict=True):
        a, b = a / a.sum(), b / b.sum()
        if np.std(a) == 0 or np.std(b) == 0:
            out.append(0.0)
        else:
            out.append(np.corrcoef(a, b)[0, 1] ** 2)
    return np.array(out)


def ref_kl(p, q):
    return np.array([scipy_entropy(b, np.maximum(a / a.sum(), 1e-10)) for a, b in zip(p, q, strict=True)])


REFS = {"js": ref_js, "bc": ref_bc, "r2": ref_r2, "kl": ref_kl}


@pytest.mark.parametrize("name", list(REFS))
def test_per_item_against_reference(name):
    p, q = _random_pairs()
    got = F.DISTRIBUTION_METRICS[name](torch.tensor(p), torch.tensor(q)).numpy()
    want = REFS[name](p, q)
    mask = np.isfinite(want)
    np.testing.assert_allclose(got[mask], want[mask], atol=1e-6)
    assert np.all(np.isfinite(got))


def test_unnormalised_inputs_are_renormalised():
    p, q = _random_pairs(zeros=False)
    a = F.js_divergence_bits(torch.tensor(p * 3.0), torch.tensor(q * 7.0))
    b = F.js_divergence_bits(torch.tensor(p), torch.tensor(q))
    assert a.item() == pytest.approx(b.item(), abs=1e-9)


def test_bounds_and_edge_cases():
    one_hot = torch.eye(4, dtype=torch.float64)
    flipped = one_hot.flip(0)
    assert F.js_divergence_bits(one_hot, flipped).item() == pytest.approx(1.0)
    assert F.bhattacharyya_coefficient(one_hot, flipped).item() == pytest.approx(0.0)
    assert F.js_divergence_bits(one_hot, one_hot).item() == pytest.approx(0.0, abs=1e-12)
    uniform = torch.full((1, 4), 0.25)
    assert F.r2_per_item(uniform, torch.tensor([[0.7, 0.1, 0.1, 0.1]])).item() == 0.0
    assert torch.isfinite(F.kl_divergence_nats(flipped, one_hot))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        F.js_divergence_bits(torch.ones(3), torch.ones(3))


@pytest.mark.parametrize("name", list(REFS))
def test_metric_collection_accumulates_batches(name):
    p, q = _random_pairs(n=101)
    metric = AmbiguityBinnedMetrics(num_classes=p.shape[1])
    for idx in np.array_split(np.arange(101), [10, 11, 60]):
        metric.update(torch.tensor(p[idx]).float(), torch.tensor(q[idx]).float(), torch.zeros(len(idx)))
    assert metric.compute()[name].item() == pytest.approx(REFS[name](p, q).mean(), abs=1e-6)


def test_crema_d_real_votes(crema_d_votes_path):
    table = read_tabulated_votes(crema_d_votes_path, "voice")
    q = table.counts / table.counts.sum(1, keepdims=True)
    uniform = np.full_like(q, 1 / 6)
    # the reference figures: uniform predictor 0.378, overall mean distribution 0.290
    js_uniform = F.js_divergence_bits(torch.tensor(uniform), torch.tensor(q)).item()
    js_mean = F.js_divergence_bits(torch.tensor(np.broadcast_to(q.mean(0), q.shape).copy()), torch.tensor(q)).item()
    assert js_uniform == pytest.approx(ref_js(uniform, q).mean(), abs=1e-9)
    assert js_uniform == pytest.approx(0.378, abs=5e-4)
    assert js_mean == pytest.approx(0.290, abs=5e-4)
    rng = np.random.default_rng(1)
    preds = rng.dirichlet(np.ones(6), size=q.shape[0])
    for name, ref in REFS.items():
        got = F.DISTRIBUTION_METRICS[name](torch.tensor(preds), torch.tensor(q)).numpy()
        np.testing.assert_allclose(got, ref(preds, q), atol=1e-6)
