"""The shared distribution maths against scipy and hand numbers, and its gradients at zero probabilities."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr
from scipy.stats import entropy as scipy_entropy

from ser_lightning.labels import plurality
from ser_lightning.metrics.functional.probability import (
    dominant_class,
    entropy,
    js_divergence_per_item,
    kl_divergence_per_item,
)


def _pairs(n=64, c=5, seed=0):
    rng = np.random.default_rng(seed)
    p, q = rng.dirichlet(np.ones(c) * 0.6, n), rng.dirichlet(np.ones(c) * 0.6, n)
    q[rng.random((n, c)) < 0.3] = 0.0
    q[q.sum(1) == 0, 0] = 1.0
    q /= q.sum(1, keepdims=True)
    p[:4] = np.eye(c)[:4]
    return p, q


@pytest.mark.parametrize(("base", "scipy_base"), [(math.e, None), (2.0, 2)])
def test_js_matches_scipy(base, scipy_base):
    p, q = _pairs()
    want = np.array([jensenshannon(a, b, base=scipy_base) ** 2 for a, b in zip(p, q, strict=True)])
    got = js_divergence_per_item(torch.tensor(p), torch.tensor(q), base=base).numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_js_hand_numbers_and_bounds():
    one_hot = torch.eye(3, dtype=torch.float64)
    # disjoint supports: ½·1·log(1/½) twice over = log 2 nats = 1 bit
    assert js_divergence_per_item(one_hot, one_hot.roll(1, 0)).tolist() == pytest.approx([math.log(2)] * 3)
    assert js_divergence_per_item(one_hot, one_hot.roll(1, 0), base=2).tolist() == pytest.approx([1.0] * 3)
    assert js_divergence_per_item(one_hot, one_hot).tolist() == [0.0, 0.0, 0.0]
    # p = (1, 0), q = (½, ½): m = (¾, ¼); ½[log(4/3)] + ½[½ log(2/3) + ½ log 2]
    want = 0.5 * math.log(4 / 3) + 0.25 * (math.log(2 / 3) + math.log(2))
    got = js_divergence_per_item(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5])).item()
    assert got == pytest.approx(want, rel=1e-6)


def test_kl_and_entropy_match_scipy():
    p, q = _pairs()
    q_floor = np.maximum(q, 1e-300)
    got = kl_divergence_per_item(torch.tensor(p), torch.tensor(np.log(q_floor))).numpy()
    np.testing.assert_allclose(got, rel_entr(p, q_floor).sum(1), rtol=1e-10)
    np.testing.assert_allclose(entropy(torch.tensor(q)).numpy(), scipy_entropy(q, axis=1), atol=1e-12)
    np.testing.assert_allclose(entropy(torch.tensor(q), base=2).numpy(), scipy_entropy(q, axis=1, base=2), atol=1e-12)
    assert entropy(torch.full((4,), 0.25)).item() == pytest.approx(math.log(4))
    # a zero target class reads nothing of log q, even -inf
    assert kl_divergence_per_item(torch.tensor([1.0, 0.0]), torch.tensor([0.0, -math.inf])).item() == 0.0


def test_broadcasting_over_leading_axes():
    p, q = _pairs(n=6)
    experts = torch.tensor(np.stack([p, q]))  # (M, B, C) against (1, B, C), as the AmbER² losses call it
    got = js_divergence_per_item(experts, torch.tensor(q).unsqueeze(0))
    assert got.shape == (2, 6)
    np.testing.assert_allclose(got[1].numpy(), 0.0, atol=1e-15)


def test_dominant_class_tie_rule_matches_labels_plurality():
    rng = np.random.default_rng(3)
    votes = rng.integers(0, 3, size=(500, 4)).astype(float)  # many ties
    votes[votes.sum(1) == 0, 2] = 1.0
    dist = votes / votes.sum(1, keepdims=True)
    want, ties = plurality(votes)
    assert ties > 50
    assert dominant_class(torch.tensor(dist)).tolist() == want.tolist()
    assert dominant_class(torch.tensor([[0.4, 0.4, 0.2], [0.1, 0.45, 0.45], [0.2, 0.3, 0.5]])).tolist() == [0, 1, 2]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_finite_for_saturated_predictions_and_one_hot_targets(dtype):
    """A softmax probability that underflows to exactly 0 (logits 200 apart) must not give NaN gradients."""
    logits = torch.tensor([[200.0, 0.0, -5.0], [0.0, 200.0, 0.0], [3.0, 1.0, 0.5]], dtype=dtype, requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=dtype)
    assert (logits.softmax(-1) == 0).any()  # the case of the bug
    for make_loss in (
        lambda: js_divergence_per_item(target, logits.softmax(-1)).mean(),
        lambda: js_divergence_per_item(logits.softmax(-1), target, base=2).mean(),
        lambda: entropy(logits.softmax(-1)).mean(),
        lambda: kl_divergence_per_item(target, logits.log_softmax(-1)).mean(),
    ):
        loss = make_loss()
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss)
        assert torch.isfinite(grad).all(), grad
    # both sides trainable, as the AmbER² MAI term without detached experts
    other = torch.tensor([[-200.0, 0.0, 0.0]] * 3, dtype=dtype, requires_grad=True)
    grads = torch.autograd.grad(js_divergence_per_item(logits.softmax(-1), other.softmax(-1)).sum(), (logits, other))
    assert all(torch.isfinite(g).all() for g in grads)
