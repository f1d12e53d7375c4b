import numpy as np
import pytest
import torch

from ser_lightning.losses import GaussianNLLCCCLoss, scale_vad_targets

W = np.array([1.4, 1.0, 1.0])


def _ccc_pop(p, t):
    """The authors' concordance_cc: population moments, ε = 1e-8 in the denominator."""
    cov = np.mean((p - p.mean()) * (t - t.mean()))
    return 2 * cov / (p.var() + t.var() + (p.mean() - t.mean()) ** 2 + 1e-8)


def _reference(mu, lv, y, ccc_weight=0.1):
    """Hand-written numpy twin of train_ser.py's VAD loss, with NaN targets left out entry by entry."""
    lv = np.clip(lv, -10, 10)
    valid = np.isfinite(y)
    nll = 0.5 * (np.exp(-lv) * (mu - np.where(valid, y, 0)) ** 2 + lv)
    nll_term = float((nll * W)[valid].sum() / valid.sum())
    cccs, ws = [], []
    for d in range(y.shape[1]):
        rows = valid[:, d]
        if rows.sum() >= 2:
            cccs.append(_ccc_pop(mu[rows, d], y[rows, d]))
            ws.append(W[d])
    ccc_term = max(0.0, 1 - float(np.dot(cccs, ws) / np.sum(ws))) if cccs else 0.0
    return nll_term + ccc_weight * ccc_term, nll_term, ccc_term


def test_scale_vad_targets_is_the_authors_neg1_1_map():
    raw = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 6.5, 7.0, float("nan")])
    got = scale_vad_targets(raw).tolist()
    assert got[:8] == [-1.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.0, 1.0]  # (u - 4) / 2, saturating below 2 and above 6
    assert np.isnan(got[8])
    assert scale_vad_targets(torch.tensor([1.0, 7.0]), half_range=3.0).tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match="half_range"):
        scale_vad_targets(raw, half_range=0.0)


def test_loss_matches_numpy_reference_all_rated():
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, size=(16, 3))
    mu = 0.6 * y + rng.normal(scale=0.3, size=(16, 3))
    lv = rng.normal(scale=2.0, size=(16, 3))
    lv[0, 0], lv[1, 2] = 14.0, -13.0  # beyond the ±10 clamp
    out = GaussianNLLCCCLoss()(torch.tensor(mu), torch.tensor(lv), torch.tensor(y))
    want, nll, ccc = _reference(mu, lv, y)
    # all rated: the NLL is the authors' mean over B x 3 of w_d·nll
    full = 0.5 * (np.exp(-np.clip(lv, -10, 10)) * (mu - y) ** 2 + np.clip(lv, -10, 10))
    assert nll == pytest.approx(float((full * W).mean()))
    assert out["nll"].item() == pytest.approx(nll, rel=1e-6)
    assert out["ccc_loss"].item() == pytest.approx(ccc, rel=1e-6)
    assert out["loss"].item() == pytest.approx(want, rel=1e-6)


def test_nan_targets_are_masked_with_finite_gradients():
    rng = np.random.default_rng(1)
    y = rng.uniform(-1, 1, size=(8, 3))
    y[:3, 1] = np.nan  # arousal missing on three clips
    y[:7, 2] = np.nan  # dominance rated once: left out of the CCC term
    mu = torch.tensor(0.5 * np.nan_to_num(y) + rng.normal(scale=0.2, size=(8, 3)), requires_grad=True)
    lv = torch.tensor(rng.normal(size=(8, 3)), requires_grad=True)
    out = GaussianNLLCCCLoss(ccc_weight=0.1)(mu, lv, torch.tensor(y))
    want, nll, ccc = _reference(mu.detach().numpy(), lv.detach().numpy(), y)
    assert out["loss"].item() == pytest.approx(want, rel=1e-6)
    assert out["nll"].item() == pytest.approx(nll, rel=1e-6)
    out["loss"].backward()
    assert torch.isfinite(mu.grad).all()
    assert torch.isfinite(lv.grad).all()
    assert (lv.grad[:3, 1] == 0).all()  # a missing rating pulls on nothing


def test_no_ccc_weight_and_float32_promotion():
    mu = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.1, -0.2]], dtype=torch.bfloat16)
    lv = torch.zeros(2, 3, dtype=torch.bfloat16)
    y = torch.tensor([[0.0, 0.5, 0.5], [0.5, 0.0, 0.0]], dtype=torch.bfloat16)
    out = GaussianNLLCCCLoss(ccc_weight=0.0)(mu, lv, y)
    assert out["loss"].dtype == torch.float32
    err = (mu.float() - y.float()).numpy()
    assert out["loss"].item() == pytest.approx(float((0.5 * err**2 * W).mean()), rel=1e-6)
    assert out["ccc_loss"].item() == 0.0
    with pytest.raises(ValueError, match="log_var_min"):
        GaussianNLLCCCLoss(log_var_min=1.0, log_var_max=1.0)
