"""Eq. 2-3 (weighted Best-of-N as a Dirichlet-mixture mean) and the verifier weighting, against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ser_lightning.alm import candidate_mixture, dirichlet_mixture_mean, score_weights, select_best

# B = 3 candidates over C = 3 classes, log-likelihoods alpha = [-1, -2, -4].
P = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]
ALPHA = [-1.0, -2.0, -4.0]
# Eq. 2 by hand: exp(alpha) = [0.36787944, 0.13533528, 0.01831564], sum 0.52153036.
W = [0.7053845126982411, 0.25949646034241913, 0.035119026959339716]
# Eq. 3: sum_b w_b p_b, e.g. class 0: 0.70538451 * 0.7 + 0.25949646 * 0.1 + 0.03511903 * 0.2.
MEAN = [0.5267426103148786, 0.35569787620545146, 0.11755951347966985]
# Candidate 1 invalid: w = [1, e^-3] / (1 + e^-3) = [sigmoid(3), 1 - sigmoid(3)] over candidates 0 and 2.
SIG3 = 1 / (1 + math.exp(-3))
MEAN_WITHOUT_1 = [SIG3 * 0.7 + (1 - SIG3) * 0.2, 0.2, SIG3 * 0.1 + (1 - SIG3) * 0.6]


def _t(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_eq2_eq3_hand_computation() -> None:
    out = dirichlet_mixture_mean(_t([P]), _t([ALPHA]))
    assert out.shape == (1, 3)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, _t([MEAN]), rtol=0, atol=1e-12)
    assert math.isclose(sum(W), 1.0)
    # numpy reference of the same sum
    w = np.exp(ALPHA) / np.exp(ALPHA).sum()
    np.testing.assert_allclose(w, W, atol=1e-15)
    np.testing.assert_allclose(out.numpy()[0], w @ np.array(P), atol=1e-12)


def test_invalid_candidates_are_left_out_of_the_softmax() -> None:
    probs = _t([P])
    probs[0, 1] = float("nan")  # an unparsed candidate may hold anything
    valid = torch.tensor([[True, False, True]])
    out = dirichlet_mixture_mean(probs, _t([ALPHA]), valid)
    torch.testing.assert_close(out, _t([MEAN_WITHOUT_1]), rtol=0, atol=1e-12)


def test_minus_inf_alpha_gets_weight_zero() -> None:
    out = dirichlet_mixture_mean(_t([P]), _t([[-1.0, float("-inf"), -4.0]]))
    torch.testing.assert_close(out, _t([MEAN_WITHOUT_1]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("tau", [0.01, 1.0, 7.5, 1e4])
def test_tau_cancels(tau: float) -> None:
    out = dirichlet_mixture_mean(_t([P]), _t([ALPHA]), tau=tau)
    torch.testing.assert_close(out, _t([MEAN]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("tau", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_tau_raises(tau: float) -> None:
    with pytest.raises(ValueError, match="tau"):
        dirichlet_mixture_mean(_t([P]), _t([ALPHA]), tau=tau)


def test_rows_without_a_valid_candidate_are_nan_and_rows_are_independent() -> None:
    probs = _t([P, P, P])
    alpha = _t([ALPHA, ALPHA, [-1.0, float("-inf"), float("-inf")]])
    valid = torch.tensor([[True, True, True], [False, False, False], [False, True, True]])
    out = dirichlet_mixture_mean(probs.float(), alpha.float(), valid)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[0], torch.tensor(MEAN, dtype=torch.float32))
    assert torch.isnan(out[1]).all()
    assert torch.isnan(out[2]).all()  # its valid candidates all have alpha = -inf


def test_large_log_likelihoods_do_not_overflow() -> None:
    out = dirichlet_mixture_mean(_t([P]), _t([[-1001.0, -1002.0, -1004.0]]))  # shift-invariant softmax
    torch.testing.assert_close(out, _t([MEAN]), rtol=0, atol=1e-12)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="probs"):
        dirichlet_mixture_mean(_t(P), _t([ALPHA]))
    with pytest.raises(ValueError, match="valid"):
        dirichlet_mixture_mean(_t([P]), _t([ALPHA]), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="finite"):
        dirichlet_mixture_mean(_t([P]), _t([[float("nan"), -1.0, -2.0]]))


def test_score_weights_normalised() -> None:
    scores = _t([[0.8, 0.4, 0.0], [0.0, 0.0, 0.0], [0.5, 0.9, 0.5], [0.3, 0.3, 0.3]])
    valid = torch.tensor([[True, True, True], [True, False, True], [True, False, True], [False, False, False]])
    w = score_weights(scores, valid)
    torch.testing.assert_close(w[0], _t([2 / 3, 1 / 3, 0.0]))  # 0.8 / 1.2, 0.4 / 1.2
    torch.testing.assert_close(w[1], _t([0.5, 0.0, 0.5]))  # all-zero -> uniform over valid
    torch.testing.assert_close(w[2], _t([0.5, 0.0, 0.5]))  # the invalid 0.9 gets nothing
    assert torch.isnan(w[3]).all()


def test_score_weights_softmax_is_eq2_with_scores() -> None:
    scores = _t([[0.9, 0.5, 0.1], [0.2, 0.7, 0.4]])
    valid = torch.tensor([[True, True, True], [True, False, True]])
    w = score_weights(scores, valid, mode="softmax")
    e = np.exp([0.9, 0.5, 0.1])
    np.testing.assert_allclose(w[0].numpy(), e / e.sum(), atol=1e-15)
    e = np.exp([0.2, 0.4])
    np.testing.assert_allclose(w[1].numpy(), [e[0] / e.sum(), 0.0, e[1] / e.sum()], atol=1e-15)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan")])
def test_score_weights_rejects_scores_outside_unit_interval(bad: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        score_weights(_t([[0.5, bad]]))
    score_weights(_t([[0.5, bad]]), torch.tensor([[True, False]]))  # an invalid candidate's score is ignored


def test_score_weights_bad_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        score_weights(_t([[0.5, 0.5]]), mode="max")


def test_weighted_mean_hand_computation_and_nan_rows() -> None:
    probs = _t([P, P])
    probs[0, 2] = float("nan")  # weight 0: must not leak
    weights = _t([[0.25, 0.75, 0.0], [float("nan")] * 3])
    out = candidate_mixture(probs, weights)
    torch.testing.assert_close(out[0], _t([0.25 * 0.7 + 0.75 * 0.1, 0.25 * 0.2 + 0.75 * 0.8, 0.1]))
    assert torch.isnan(out[1]).all()


def test_verifier_weighting_end_to_end() -> None:
    w = score_weights(_t([[0.8, 0.4, 0.0]]))
    out = candidate_mixture(_t([P]), w)
    torch.testing.assert_close(out, _t([[0.5, 0.4, 0.1]]))  # (0.8 * p0 + 0.4 * p1) / 1.2


def test_select_best() -> None:
    probs = _t([P, P, P, P])
    probs[2, 0] = float("nan")
    scores = _t([[0.2, 0.9, 0.5], [0.7, 0.3, 0.7], [0.9, 0.1, 0.1], [0.5, 0.5, 0.5]])
    valid = torch.tensor([[True, True, True], [True, True, True], [False, True, True], [False, False, False]])
    best, index = select_best(probs, scores, valid)
    assert index.tolist() == [1, 0, 1, -1]  # row 1: tie -> lowest index; row 2: the invalid 0.9 is skipped
    torch.testing.assert_close(best[:3], _t([P[1], P[0], P[1]]))
    assert torch.isnan(best[3]).all()


def test_select_best_with_log_likelihoods_is_bon() -> None:
    best, index = select_best(_t([P]), _t([[-3.0, -0.5, float("-inf")]]))
    assert index.tolist() == [1]
    torch.testing.assert_close(best, _t([P[1]]))
    best, index = select_best(_t([P]), _t([[float("-inf")] * 3]), torch.tensor([[False, True, True]]))
    assert index.tolist() == [1]  # all -inf: the first valid one
