import numpy as np
import pytest
import torch

from ser_lightning.losses import (
    ClassBalancedCrossEntropyLoss,
    SoftClassBalancedCrossEntropyLoss,
    class_balanced_weights,
    soft_class_balanced_cross_entropy,
)

# the authors' MSP-Podcast 2.0 training counts (hparams/wavlm_ser_example.yaml, cbce.class_counts), 9 classes
MSP_COUNTS = [50747, 45328, 28919, 24910, 1207, 2066, 4278, 8001, 3734]


def _log_softmax(x):
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def _authors_weights(counts, beta):
    """train_ser.py: (1 - β) / clamp(1 - β^n, 1e-8), divided by the mean."""
    w = (1 - beta) / np.maximum(1 - beta ** np.asarray(counts, dtype=float), 1e-8)
    return w / w.mean()


def test_weights_equal_the_authors_for_nonzero_counts():
    np.testing.assert_allclose(
        class_balanced_weights(MSP_COUNTS, 0.9999).numpy(), _authors_weights(MSP_COUNTS, 0.9999), rtol=1e-6
    )
    # a class with no samples: ours weighs it like a one-sample class, theirs divides by 1e-8
    ours = class_balanced_weights([10, 0], 0.9999).numpy()
    np.testing.assert_allclose(ours, _authors_weights([10, 1], 0.9999), rtol=1e-6)
    assert not np.allclose(ours, _authors_weights([10, 0], 0.9999))


def test_hard_cbce_reductions_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 9))
    y = np.array([0, 4, 4, 8, 2, 5])
    w = _authors_weights(MSP_COUNTS, 0.9999)
    nll = -_log_softmax(logits)[np.arange(6), y]
    lt, yt = torch.tensor(logits), torch.tensor(y)
    per = ClassBalancedCrossEntropyLoss(MSP_COUNTS, 0.9999, reduction="none")(lt, yt)
    np.testing.assert_allclose(per.numpy(), w[y] * nll, rtol=1e-6)
    batchmean = ClassBalancedCrossEntropyLoss(MSP_COUNTS, 0.9999, reduction="batchmean")(lt, yt).item()
    assert batchmean == pytest.approx(np.mean(w[y] * nll), rel=1e-6)  # the authors' per_samp.mean()
    mean = ClassBalancedCrossEntropyLoss(MSP_COUNTS, 0.9999)(lt, yt).item()
    assert mean == pytest.approx(np.sum(w[y] * nll) / np.sum(w[y]), rel=1e-6)  # torch's weighted mean
    with pytest.raises(ValueError, match="reduction"):
        ClassBalancedCrossEntropyLoss(MSP_COUNTS, reduction="sum")


def test_soft_cbce_against_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, 9))
    q = rng.dirichlet(np.ones(9), size=5)
    q[0] = np.eye(9)[3]  # a one-hot row: the hard CB-CE's per-sample loss
    w = _authors_weights(MSP_COUNTS, 0.9999)
    want = -(w * q * _log_softmax(logits)).sum(1)
    lt, qt = torch.tensor(logits), torch.tensor(q)
    loss = SoftClassBalancedCrossEntropyLoss(MSP_COUNTS)  # β = 0.9999 by default, as theirs
    assert loss(lt, qt).item() == pytest.approx(want.mean(), rel=1e-6)
    per = SoftClassBalancedCrossEntropyLoss(MSP_COUNTS, reduction="none")(lt, qt).numpy()
    np.testing.assert_allclose(per, want, rtol=1e-6)
    hard = ClassBalancedCrossEntropyLoss(MSP_COUNTS, 0.9999, reduction="none")(lt[:1], torch.tensor([3]))
    assert per[0] == pytest.approx(hard.item(), rel=1e-6)
    plain = soft_class_balanced_cross_entropy(lt, qt).numpy()
    np.testing.assert_allclose(plain, -(q * _log_softmax(logits)).sum(1), rtol=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        SoftClassBalancedCrossEntropyLoss(MSP_COUNTS, reduction="batchmean")
