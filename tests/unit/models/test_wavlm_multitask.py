"""WavLMMultitask's loss wiring (paper 004 as its authors ran it) against numpy hand computations.

The model's heads give the logits and VAD outputs (eval mode: no dropout); every loss is recomputed here in numpy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ser_lightning.losses import CurriculumSetting
from ser_lightning.models import WavLMMultitask
from ser_lightning.nn import AudioEncoder, tiny_audio_config

NAN = float("nan")
TARGETS = np.array([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [0.0, 0.2, 0.8, 0.0], [0.1, 0.1, 0.1, 0.7]])
ENTROPY = -(np.where(TARGETS > 0, TARGETS * np.log(np.where(TARGETS > 0, TARGETS, 1.0)), 0.0)).sum(1)
H_NORM = ENTROPY / math.log(4)  # 0.5, 1.0, 0.361, 0.678
VAD = np.array([[3.0, 4.0, 2.0], [2.0, 7.0, 3.0], [5.0, 1.0, 4.0], [NAN, 5.0, 4.5]])


def _model(**kwargs):
    torch.manual_seed(0)
    encoder = AudioEncoder(config=tiny_audio_config("wavlm"), freeze="none")
    return WavLMMultitask(encoder, num_classes=4, **kwargs).eval()  # eval: no dropout


def _batch(consensus=(0, -1, 2, 3)):
    g = torch.Generator().manual_seed(1)
    return {
        "audio": 0.1 * torch.randn(4, 8000, generator=g),
        "audio_mask": torch.ones(4, 8000, dtype=torch.long),
        "targets": torch.tensor(TARGETS, dtype=torch.float32),
        "entropy": torch.tensor(ENTROPY, dtype=torch.float64),
        "consensus": torch.tensor(consensus),
        "vad": torch.tensor(VAD, dtype=torch.float32),
    }


def _outputs(model, batch):
    with torch.no_grad():
        logits, vad = model.outputs(batch)
    return logits.double().numpy(), None if vad is None else vad.double().numpy()


def _log_softmax(logits):
    z = logits - logits.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def _kl(logits):
    logp = _log_softmax(logits)
    q = TARGETS
    return np.where(q > 0, q * (np.log(np.where(q > 0, q, 1.0)) - logp), 0.0).sum(1)


def _cb_weights(counts, beta):
    w = (1 - beta) / (1 - beta ** np.asarray(counts, dtype=float))
    return w / w.sum() * len(counts)


def test_ce_uses_the_consensus_label_and_leaves_null_rows_out():
    model = _model(categorical_loss="ce", hard_target="consensus", vad_weight=0.0)
    batch = _batch()
    logits, _ = _outputs(model, batch)
    nll = -_log_softmax(logits)[np.arange(4), [0, 0, 2, 3]]
    terms = model.training_loss(batch)
    assert terms["categorical"].item() == pytest.approx(nll[[0, 2, 3]].mean(), rel=1e-5)  # row 1 has none
    assert terms["hard_label_missing"].item() == 1.0
    assert terms["loss"].item() == pytest.approx(terms["categorical"].item())


def test_cbce_weights_with_beta_0_9999_and_batch_mean():
    counts = [300.0, 2000.0, 100.0, 50.0]
    model = _model(categorical_loss="cbce", hard_target="consensus", class_counts=counts, vad_weight=0.0)
    assert model.hparams.cb_beta == 0.9999
    batch = _batch()
    logits, _ = _outputs(model, batch)
    w = _cb_weights(counts, 0.9999)
    labels = np.array([0, 2, 3])
    per = -w[labels] * _log_softmax(logits)[[0, 2, 3], labels]
    assert model.training_loss(batch)["categorical"].item() == pytest.approx(per.mean(), rel=1e-5)


def test_plurality_hard_target_breaks_ties_toward_the_first_class():
    model = _model(categorical_loss="ce", hard_target="plurality", vad_weight=0.0)
    batch = _batch(consensus=(-1, -1, -1, -1))  # ignored with plurality
    logits, _ = _outputs(model, batch)
    labels = np.array([0, 0, 2, 3])  # rows 0 and 1 tie: the first of the tied classes
    terms = model.training_loss(batch)
    assert terms["categorical"].item() == pytest.approx(-_log_softmax(logits)[np.arange(4), labels].mean(), rel=1e-5)
    assert "hard_label_missing" not in terms


def test_a_batch_without_hard_labels_gives_a_zero_loss_that_keeps_the_graph():
    model = _model(categorical_loss="ce", hard_target="consensus", vad_weight=0.0)
    terms = model.training_loss(_batch(consensus=(-1, -1, -1, -1)))
    assert terms["loss"].item() == 0.0
    assert terms["hard_label_missing"].item() == 4.0
    terms["loss"].backward()
    grads = [p.grad for p in model.categorical_head.parameters()]
    assert all(g is not None and torch.all(g == 0) for g in grads)


def test_consensus_is_required_unless_plurality():
    batch = _batch()
    del batch["consensus"]
    with pytest.raises(KeyError, match="consensus"):
        _model(categorical_loss="ce", hard_target="consensus", vad_weight=0.0).training_loss(batch)


def test_the_default_hard_label_is_the_neutral_guard_of_the_target():
    model = _model(categorical_loss="ce", vad_weight=0.0, classes=["Angry", "Happy", "Neutral", "Sad"])
    assert model.hparams.hard_target == "neutral_guard"
    batch = _batch(consensus=(-1, -1, -1, -1))  # ignored by the guard
    batch["primary_votes"] = torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 1], [0, 1, 4, 0], [NAN, NAN, NAN, NAN]])
    logits, _ = _outputs(model, batch)
    # row 0 ties Angry/Happy: Happy (later name); row 1 all tie: Sad; row 2 Neutral holds (4 votes, 0.8, +0.6)
    labels = np.array([1, 3, 2])
    terms = model.training_loss(batch)
    want = -_log_softmax(logits)[np.arange(3), labels].mean()  # row 3 has no primary votes: left out
    assert terms["categorical"].item() == pytest.approx(want, rel=1e-5)
    assert terms["hard_label_missing"].item() == 1.0


@pytest.mark.parametrize("name", ["soft_cbce", "wkld", "js"])
def test_soft_losses_against_numpy(name):
    counts = [300.0, 2000.0, 100.0, 50.0]
    model = _model(categorical_loss=name, class_counts=counts, vad_weight=0.0)
    batch = _batch()
    logits, _ = _outputs(model, batch)
    logp, q = _log_softmax(logits), TARGETS
    if name == "soft_cbce":
        want = -(q * logp * _cb_weights(counts, 0.9999)).sum(1)
    elif name == "wkld":
        w = 1 / np.asarray(counts)
        w = np.clip(w / w.mean(), 0.25, 5.0)
        want = (np.where(q > 0, q * (np.log(np.where(q > 0, q, 1.0)) - logp), 0.0) * w).sum(1)
    else:
        p = np.exp(logp)
        m = 0.5 * (p + q)
        want = 0.5 * np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0) / m), 0.0).sum(1)
        want = want + 0.5 * (p * np.log(p / m)).sum(1)
    assert model.training_loss(batch)["categorical"].item() == pytest.approx(want.mean(), rel=1e-5)


def test_curriculum_filter_keeps_low_entropy_samples_and_falls_back_to_the_whole_batch():
    model = _model(categorical_loss="kl", vad_weight=0.0)
    batch = _batch()
    kl = _kl(_outputs(model, batch)[0])
    assert model.training_loss(batch)["categorical"].item() == pytest.approx(kl.mean(), rel=1e-5)  # off
    model.curriculum = CurriculumSetting("filter", active=True, threshold=0.6)
    keep = H_NORM <= 0.6  # rows 0 and 2
    assert keep.tolist() == [True, False, True, False]
    assert model.training_loss(batch)["categorical"].item() == pytest.approx(kl[keep].mean(), rel=1e-5)
    model.curriculum = CurriculumSetting("filter", active=True, threshold=0.1)  # keeps none: whole batch
    assert model.training_loss(batch)["categorical"].item() == pytest.approx(kl.mean(), rel=1e-5)
    model.curriculum = CurriculumSetting("filter", active=False)  # warm-up
    assert model.training_loss(batch)["categorical"].item() == pytest.approx(kl.mean(), rel=1e-5)


def test_curriculum_weights_and_hard_rows():
    model = _model(categorical_loss="kl", vad_weight=0.0)
    batch = _batch()
    kl = _kl(_outputs(model, batch)[0])
    model.curriculum = CurriculumSetting("weight", active=True, alpha=2.0, min_weight=0.15)
    w = np.clip((1 - H_NORM) ** 2.0, 0.15, 1.0)
    assert model.training_loss(batch)["categorical"].item() == pytest.approx((w * kl).sum() / w.sum(), rel=1e-5)

    ce = _model(categorical_loss="ce", hard_target="consensus", vad_weight=0.0)
    nll = -_log_softmax(_outputs(ce, batch)[0])[np.arange(4), [0, 0, 2, 3]]
    ce.curriculum = CurriculumSetting("filter", active=True, threshold=0.6)
    # row 1 has no consensus label and is dropped first; of rows 0, 2, 3 the filter keeps 0 and 2
    assert ce.training_loss(batch)["categorical"].item() == pytest.approx(nll[[0, 2]].mean(), rel=1e-5)


def _ccc(pred, target):
    mp, mt = pred.mean(), target.mean()
    cov = ((pred - mp) * (target - mt)).mean()
    return 2 * cov / (pred.var() + target.var() + (mp - mt) ** 2 + 1e-8)


def test_gaussian_nll_vad_path():
    model = _model(categorical_loss="kl")
    assert model.hparams.vad_weight == 0.3
    assert model.hparams.vad_loss == "gaussian_nll"
    batch = _batch()
    logits, vad = _outputs(model, batch)
    assert vad.shape == (4, 6)
    mean, s = vad[:, :3], np.clip(vad[:, 3:], -10, 10)
    y = np.clip((VAD - 4) / 2, -1, 1)  # 1-7 ratings -> [-1, 1], saturating below 2 and above 6
    dims = np.array([1.4, 1.0, 1.0])
    valid = np.isfinite(y)
    terms = 0.5 * (np.exp(-s) * (mean - np.where(valid, y, 0)) ** 2 + s) * dims
    nll = np.where(valid, terms, 0).sum() / valid.sum()
    ccc = np.array([_ccc(mean[valid[:, d], d], y[valid[:, d], d]) for d in range(3)])
    ccc_loss = max(0.0, 1 - (dims * ccc).sum() / dims.sum())
    got = model.training_loss(batch)
    assert got["vad_nll"].item() == pytest.approx(nll, rel=1e-5)
    assert got["vad_ccc_loss"].item() == pytest.approx(ccc_loss, rel=1e-5, abs=1e-6)
    want = _kl(logits).mean() + 0.3 * (nll + 0.1 * ccc_loss)
    assert got["loss"].item() == pytest.approx(want, rel=1e-5)
    # the eval metrics score the predicted means against the same scaled targets
    pred, target = model.vad_prediction(torch.tensor(vad), torch.tensor(VAD))
    np.testing.assert_allclose(pred.numpy(), mean)
    np.testing.assert_allclose(target.numpy(), y)


def test_ccc_vad_path_keeps_three_outputs_on_raw_ratings():
    model = _model(categorical_loss="kl", vad_loss="ccc", vad_weight=0.5)
    batch = _batch()
    _, vad = _outputs(model, batch)
    assert vad.shape == (4, 3)
    got = model.training_loss(batch)
    assert "vad_nll" not in got
    assert got["loss"].item() == pytest.approx(got["categorical"].item() + 0.5 * got["vad_ccc_loss"].item(), rel=1e-5)
    pred, target = model.vad_prediction(torch.tensor(vad), torch.tensor(VAD))
    np.testing.assert_allclose(target.numpy(), VAD)


def test_layernorm_gelu_head_and_option_checks():
    model = _model(head="layernorm_gelu")
    layers = [type(m).__name__ for m in model.categorical_head.net]
    assert layers == ["Linear", "LayerNorm", "GELU", "Dropout", "Linear"]
    bad = {"categorical_loss": "mse", "hard_target": "mode", "vad_loss": "l1", "head": "gru"}
    for name, value in bad.items():
        with pytest.raises(ValueError, match=name):
            _model(**{name: value})
    with pytest.raises(ValueError, match="class_counts"):
        _model(categorical_loss="wkld")
