import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from ser_lightning.losses import (
    AmbER2Loss,
    CCCLoss,
    ClassBalancedCrossEntropyLoss,
    JSDivergenceLoss,
    KLDivergenceLoss,
    class_balanced_weights,
    concordance_cc,
    expert_weights,
)
from ser_lightning.metrics.functional.probability import js_divergence_per_item


def _js_nats(p, q):
    return jensenshannon(p, q) ** 2  # scipy: natural log, square root of the divergence


def test_js_divergence_matches_scipy_in_nats_and_bits():
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(5), 8), rng.dirichlet(np.ones(5), 8)
    q[0] = [1, 0, 0, 0, 0]
    got = js_divergence_per_item(torch.tensor(p), torch.tensor(q)).numpy()
    np.testing.assert_allclose(got, [_js_nats(a, b) for a, b in zip(p, q, strict=True)], atol=1e-7)
    got2 = js_divergence_per_item(torch.tensor(p), torch.tensor(q), base=2).numpy()
    np.testing.assert_allclose(got2, got / math.log(2), atol=1e-7)


def test_js_loss_matches_scipy_for_ordinary_fp32_inputs():
    """The demo's loss: fp32 logits against vote distributions, within 1e-7 of a float64 scipy reference."""
    rng = np.random.default_rng(5)
    logits = torch.tensor(rng.normal(size=(64, 4)) * 2, dtype=torch.float32)
    votes = rng.multinomial(5, rng.dirichlet(np.ones(4)), size=64).astype(float)
    target = votes / votes.sum(1, keepdims=True)
    probs = torch.softmax(logits.double(), -1).numpy()
    want = np.mean([_js_nats(p, q) for p, q in zip(probs, target, strict=True)])
    got = JSDivergenceLoss()(logits, torch.tensor(target, dtype=torch.float32)).item()
    assert got == pytest.approx(want, abs=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("entropy_weight", [0.0, 0.08])
def test_js_loss_gradients_finite_when_softmax_underflows(dtype, entropy_weight):
    """Logits 200 apart make softmax probabilities exactly 0; one-hot targets make target zeros too."""
    logits = torch.tensor([[200.0, 0.0, 0.0, -3.0], [0.0, 0.0, 200.0, 0.0]], dtype=dtype, requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], dtype=dtype)
    assert (logits.softmax(-1) == 0).any()
    loss = JSDivergenceLoss(entropy_weight=entropy_weight)(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all(), logits.grad


def test_amber2_loss_hand_computation():
    y = np.array([[0.6, 0.4, 0.0], [0.2, 0.2, 0.6]])
    s = np.array([[0.5, 0.3, 0.2], [0.3, 0.3, 0.4]])
    p_a = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    p_t = np.array([[0.2, 0.2, 0.6], [0.4, 0.4, 0.2]])
    kappa, l_rai, l_mai, w_exp = 4.0, 1.0, 0.5, 1.0
    # Eq. 5 by hand, per sample: u_m = exp(-κ D_m) / Σ exp(-κ D_m'), D_m = JS(p_m ‖ y)
    d_a = np.array([_js_nats(a, b) for a, b in zip(p_a, y, strict=True)])
    d_t = np.array([_js_nats(a, b) for a, b in zip(p_t, y, strict=True)])
    u_a = np.exp(-kappa * d_a) / (np.exp(-kappa * d_a) + np.exp(-kappa * d_t))
    u_t = 1 - u_a
    rai = np.mean([_js_nats(a, b) for a, b in zip(y, s, strict=True)])  # Eq. 3
    mai = np.mean(
        u_a * [_js_nats(a, b) for a, b in zip(s, p_a, strict=True)]
        + u_t * [_js_nats(a, b) for a, b in zip(s, p_t, strict=True)]
    )  # Eq. 4
    expert = np.mean(d_a) + np.mean(d_t)
    total = l_rai * rai + l_mai * mai + w_exp * expert  # Eq. 6 + the experts' own terms

    t = {k: torch.tensor(v) for k, v in {"y": y, "s": s, "a": p_a, "t": p_t}.items()}
    loss = AmbER2Loss(lambda_rai=l_rai, lambda_mai=l_mai, kappa=kappa, expert_weight=w_exp)
    out = loss(t["s"], {"audio": t["a"], "text": t["t"]}, t["y"])
    assert out["rai"].item() == pytest.approx(rai, abs=1e-7)
    assert out["mai"].item() == pytest.approx(mai, abs=1e-7)
    assert out["loss"].item() == pytest.approx(total, abs=1e-7)
    assert out["u/audio"].item() == pytest.approx(u_a.mean(), abs=1e-7)
    assert out["u/audio"].item() + out["u/text"].item() == pytest.approx(1.0)
    u = expert_weights(torch.stack([t["a"], t["t"]]), t["y"], kappa)
    np.testing.assert_allclose(u.numpy(), np.stack([u_a, u_t]), atol=1e-7)


def test_amber2_detach_controls_expert_gradients():
    torch.manual_seed(0)
    y = torch.softmax(torch.randn(4, 3), -1)
    logits = {k: torch.randn(4, 3, requires_grad=True) for k in ("s", "a", "t")}
    for detach, expect_grad in ((True, False), (False, True)):
        for v in logits.values():
            v.grad = None
        probs = {k: v.softmax(-1) for k, v in logits.items()}
        loss = AmbER2Loss(expert_weight=0.0, detach_experts=detach)
        loss(probs["s"], {"a": probs["a"], "t": probs["t"]}, y)["loss"].backward()
        assert logits["s"].grad is not None
        assert (logits["a"].grad is not None and logits["a"].grad.abs().sum() > 0) == expect_grad


def test_higher_kappa_sharpens_toward_better_expert():
    y = torch.tensor([[0.8, 0.2]])
    experts = torch.tensor([[[0.75, 0.25]], [[0.2, 0.8]]])
    u2 = expert_weights(experts, y, kappa=2.0)
    u8 = expert_weights(experts, y, kappa=8.0)
    assert u8[0, 0] > u2[0, 0] > 0.5


def test_js_and_kl_losses():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    target = torch.tensor([[0.5, 0.5, 0.0]])
    p = logits.softmax(-1).numpy()[0]
    assert JSDivergenceLoss()(logits, target).item() == pytest.approx(_js_nats(p, target[0].numpy()), abs=1e-6)
    kl = sum(t * math.log(t / q) for t, q in zip(target[0].tolist(), p, strict=True) if t > 0)
    assert KLDivergenceLoss()(logits, target).item() == pytest.approx(kl, abs=1e-6)
    ent = -(p * np.log(p)).sum()
    with_ent = JSDivergenceLoss(entropy_weight=0.08)(logits, target).item()
    assert with_ent == pytest.approx(_js_nats(p, target[0].numpy()) + 0.08 * ent, abs=1e-6)


def test_class_balanced_weights_and_loss():
    counts = [100, 10, 1]
    beta = 0.99
    eff = [(1 - beta**n) / (1 - beta) for n in counts]
    raw = np.array([1 / e for e in eff])
    np.testing.assert_allclose(class_balanced_weights(counts, beta).numpy(), raw / raw.sum() * 3, rtol=1e-6)
    loss = ClassBalancedCrossEntropyLoss(counts, beta)
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    soft = torch.tensor([[0.4, 0.4, 0.2], [0.1, 0.6, 0.3]])  # plurality: 0 (tie -> first), 1
    w = class_balanced_weights(counts, beta)
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]), weight=w)
    assert loss(logits, soft).item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="beta"):
        class_balanced_weights(counts, 1.0)


def _ccc_reference(p, t):
    """CCC per column with sample (n - 1) moments, torchmetrics' (and the logged metric's) estimator."""
    out = []
    for a, b in zip(p.T, t.T, strict=True):
        cov = np.cov(a, b)  # ddof=1
        out.append(2 * cov[0, 1] / (cov[0, 0] + cov[1, 1] + (a.mean() - b.mean()) ** 2))
    return np.array(out)


def test_ccc_against_numpy_and_nan_rows():
    rng = np.random.default_rng(1)
    t = rng.normal(size=(20, 3))
    p = t * 0.5 + rng.normal(size=(20, 3)) * 0.3 + 0.2
    ccc = _ccc_reference(p, t)
    np.testing.assert_allclose(concordance_cc(torch.tensor(p), torch.tensor(t)).numpy(), ccc, atol=1e-9)
    assert CCCLoss()(torch.tensor(p), torch.tensor(t)).item() == pytest.approx(1 - np.mean(ccc))
    t_nan = t.copy()
    t_nan[:3, 0] = np.nan  # a missing rating leaves only that dimension's row out
    want = 1 - np.mean([_ccc_reference(p[3:, :1], t[3:, :1])[0], *ccc[1:]])
    assert CCCLoss()(torch.tensor(p), torch.tensor(t_nan)).item() == pytest.approx(want)


def test_ccc_loss_finite_for_degenerate_dimensions():
    p = torch.tensor([[1.0, 0.5, 0.1], [1.0, 0.7, 0.3], [1.0, 0.2, 0.2]], requires_grad=True)
    t = torch.tensor([[3.0, 2.0, float("nan")], [4.0, 2.0, float("nan")], [2.0, 2.0, 1.0]])
    # dim 0: constant predictions; dim 1: constant targets; dim 2: one rated row -> nothing to correlate
    loss = CCCLoss()(p, t)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(p.grad).all()
    pb = torch.tensor([[0.1, 0.2], [0.5, 0.1], [0.3, 0.9], [0.8, 0.4]], dtype=torch.bfloat16, requires_grad=True)
    tb = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 2.0], [2.0, 1.0]], dtype=torch.bfloat16)
    loss_b = CCCLoss()(pb, tb)
    loss_b.backward()
    assert loss_b.dtype == torch.bfloat16
    assert torch.isfinite(loss_b)
    assert torch.isfinite(pb.grad).all()
