import numpy as np
import pytest
import torch

from ser_lightning.losses import ClassWeightedKLDivergenceLoss, inverse_frequency_weights, weighted_kl_divergence

# the authors' kld_weighting.class_counts (hparams/wavlm_ser_example.yaml), 9 classes
KLD_COUNTS = [50708, 46711, 27936, 29170, 1199, 1876, 3989, 4772, 2829]


def _log_softmax(x):
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def _authors_weights(counts, power=1.0):
    """train_ser.py kld_weighting: (1 / max(1, n))^power, / mean, clamp [0.25, 5]."""
    w = (1 / np.maximum(1.0, np.asarray(counts, dtype=float))) ** power
    return np.clip(w / w.mean(), 0.25, 5.0)


def test_inverse_frequency_weights_match_the_authors():
    np.testing.assert_allclose(inverse_frequency_weights(KLD_COUNTS).numpy(), _authors_weights(KLD_COUNTS), rtol=1e-6)
    np.testing.assert_allclose(
        inverse_frequency_weights(KLD_COUNTS, power=0.5, normalize="sum").numpy(),
        _authors_weights(KLD_COUNTS, 0.5),
        rtol=1e-6,
    )
    assert inverse_frequency_weights([10, 10], normalize="none").tolist() == [0.25, 0.25]  # 0.1 clamped up
    with pytest.raises(ValueError, match="normalize"):
        inverse_frequency_weights(KLD_COUNTS, normalize="max")


def test_wkld_against_numpy():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6, 9))
    q = rng.dirichlet(np.ones(9) * 0.5, size=6)
    q[0] = np.eye(9)[5]  # zeros in the target add nothing
    w = _authors_weights(KLD_COUNTS)
    logp = _log_softmax(logits)
    safe_q = np.where(q > 0, q, 1.0)
    want = (w * np.where(q > 0, q * (np.log(safe_q) - logp), 0.0)).sum(1)
    lt, qt = torch.tensor(logits), torch.tensor(q)
    assert ClassWeightedKLDivergenceLoss(KLD_COUNTS)(lt, qt).item() == pytest.approx(want.mean(), rel=1e-6)
    per = ClassWeightedKLDivergenceLoss(KLD_COUNTS, reduction="none")(lt, qt).numpy()
    np.testing.assert_allclose(per, want, rtol=1e-6)
    # unit weights: the plain KL
    plain = weighted_kl_divergence(qt, lt.log_softmax(-1), torch.ones(9)).numpy()
    np.testing.assert_allclose(plain, np.where(q > 0, q * (np.log(safe_q) - logp), 0.0).sum(1), rtol=1e-6)
    explicit = ClassWeightedKLDivergenceLoss(weights=w.tolist(), reduction="none")(lt, qt).numpy()
    np.testing.assert_allclose(explicit, want, rtol=1e-6)


def test_wkld_arguments_and_finite_gradients():
    with pytest.raises(ValueError, match="exactly one"):
        ClassWeightedKLDivergenceLoss()
    with pytest.raises(ValueError, match="reduction"):
        ClassWeightedKLDivergenceLoss(KLD_COUNTS, reduction="sum")
    logits = torch.tensor([[300.0, 0.0, 0.0], [0.0, 1.0, 2.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    loss = ClassWeightedKLDivergenceLoss([5, 3, 1])(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
