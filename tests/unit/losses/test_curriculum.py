
import numpy as np
import pytest
import torch

from ser_lightning.losses import (
    CurriculumSetting,
    EntropyCurriculumSchedule,
    curriculum_keep,
    curriculum_loss,
    curriculum_weights,
    weighted_batch_mean,
)

NAN = float("nan")


def test_default_filter_schedule_by_hand():
    """The authors' YAML: warm-up 5, ramp 6, 0.5 -> 0.95; Lightning epochs 0-4 are their epochs 1-5 (off)."""
    schedule = EntropyCurriculumSchedule()
    want = {5: 0.5, 6: 0.59, 7: 0.68, 8: 0.77, 9: 0.86, 10: 0.95, 11: 0.95, 30: 0.95}
    for epoch in range(5):
        setting = schedule.at(epoch)
        assert not setting.active
        assert setting.threshold is None
        assert setting.effective_threshold == 1.0  # keeps everything
    for epoch, thr in want.items():
        setting = schedule.at(epoch)
        assert setting.active
        assert setting.mode == "filter"
        assert setting.threshold == pytest.approx(thr)
    assert EntropyCurriculumSchedule(mode="filter_rev").at(0).effective_threshold == 0.0


def test_default_weight_schedule_by_hand():
    schedule = EntropyCurriculumSchedule(mode="weight")
    assert not schedule.at(4).active
    assert schedule.at(4).effective_alpha == 0.0
    for epoch, alpha in {5: 2.0, 6: 1.6, 7: 1.2, 8: 0.8, 9: 0.4, 10: 0.0, 12: 0.0}.items():
        setting = schedule.at(epoch)
        assert setting.active
        assert setting.alpha == pytest.approx(alpha)
        assert setting.min_weight == 0.15


def _authors_policy_1based(e, warmup, ramp, start, end):
    """entropy_curriculum.py's _entropy_curriculum_policy (filter mode), written out for 1-based epochs."""
    if e <= warmup:
        return None
    t = 1.0 if ramp <= 1 else min(1.0, max(0.0, max(0, e - warmup - 1) / (ramp - 1)))
    return start + t * (end - start)


@pytest.mark.parametrize(("warmup", "ramp"), [(0, 0), (0, 1), (1, 3), (2, 1), (5, 6), (3, 2)])
def test_lightning_epoch_is_their_epoch_minus_one(warmup, ramp):
    schedule = EntropyCurriculumSchedule(warmup_epochs=warmup, ramp_epochs=ramp, start_threshold=0.2, end_threshold=1)
    for epoch in range(12):
        theirs = _authors_policy_1based(epoch + 1, warmup, ramp, 0.2, 1.0)
        ours = schedule.at(epoch)
        assert ours.active == (theirs is not None)
        if theirs is not None:
            assert ours.threshold == pytest.approx(theirs)


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="mode"):
        EntropyCurriculumSchedule(mode="quantile")
    with pytest.raises(ValueError, match=">= 0"):
        EntropyCurriculumSchedule(warmup_epochs=-1)
    with pytest.raises(ValueError, match="min_weight"):
        EntropyCurriculumSchedule(min_weight=1.5)


H = torch.tensor([0.0, 0.25, 0.5, 0.9, 1.0, NAN], dtype=torch.float64)


def test_filter_masks_and_kept_fraction():
    filt = CurriculumSetting("filter", True, threshold=0.5)
    assert curriculum_keep(H, filt).tolist() == [True, True, True, False, False, False]
    assert curriculum_weights(H, filt).tolist() == [1, 1, 1, 0, 0, 0]
    rev = CurriculumSetting("filter_rev", True, threshold=0.5)
    assert curriculum_weights(H, rev).tolist() == [0, 0, 1, 1, 1, 0]
    assert curriculum_keep(H, rev).float().mean().item() == pytest.approx(3 / 6)  # the kept fraction
    off = CurriculumSetting("filter", False)
    assert curriculum_weights(H, off).tolist() == [1] * 6
    assert curriculum_keep(H, None).all()


def test_filter_that_keeps_nothing_falls_back_to_the_whole_batch():
    h = torch.tensor([0.8, 0.9, 0.7])
    setting = CurriculumSetting("filter", True, threshold=0.5)
    assert curriculum_keep(h, setting).tolist() == [False, False, False]  # counted as kept 0 of 3
    assert curriculum_weights(h, setting).tolist() == [1.0, 1.0, 1.0]
    loss = torch.tensor([1.0, 2.0, 6.0])
    assert curriculum_loss(loss, h, setting).item() == pytest.approx(3.0)


def test_weight_modes_by_hand():
    w = curriculum_weights(H, CurriculumSetting("weight", True, alpha=2.0, min_weight=0.15)).tolist()
    # (1 - h)^2 = 1, 0.5625, 0.25, 0.01, 0, nan -> clamp to [0.15, 1]; no entropy -> 0
    assert w == pytest.approx([1.0, 0.5625, 0.25, 0.15, 0.15, 0.0])
    w_rev = curriculum_weights(H, CurriculumSetting("weight_rev", True, alpha=2.0, min_weight=0.15)).tolist()
    # max(h, 1e-8)^2 = 1e-16, 0.0625, 0.25, 0.81, 1
    assert w_rev == pytest.approx([0.15, 0.15, 0.25, 0.81, 1.0, 0.0])
    w_end = curriculum_weights(H, CurriculumSetting("weight", True, alpha=0.0, min_weight=0.15)).tolist()
    assert w_end == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # 0^0 = 1: α = 0 is no curriculum
    half = curriculum_weights(H, CurriculumSetting("weight", True, alpha=0.5, min_weight=0.15)).numpy()
    np.testing.assert_allclose(half[:5], np.clip(np.sqrt(1 - H.numpy()[:5]), 0.15, 1))


def test_weight_mode_with_vanishing_weights_falls_back_to_uniform():
    h = torch.tensor([1.0, 1.0])
    setting = CurriculumSetting("weight", True, alpha=2.0, min_weight=0.0)
    assert curriculum_weights(h, setting).tolist() == [1.0, 1.0]  # mean <= 1e-8, as theirs


def test_curriculum_loss_is_the_weighted_mean():
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, NAN], dtype=torch.float64)
    filt = CurriculumSetting("filter", True, threshold=0.5)
    assert curriculum_loss(loss, H, filt).item() == pytest.approx(2.0)  # mean of the kept 1, 2, 3
    weight = CurriculumSetting("weight", True, alpha=2.0, min_weight=0.15)
    w = np.array([1.0, 0.5625, 0.25, 0.15, 0.15])
    want = (w * np.arange(1, 6)).sum() / w.sum()  # theirs: mean((w / mean w) * l)
    assert curriculum_loss(loss, H, weight).item() == pytest.approx(want)
    assert curriculum_loss(loss[:5], H[:5], None).item() == pytest.approx(3.0)
    assert weighted_batch_mean(torch.tensor([2.0, 4.0]), torch.tensor([1.0, 3.0])).item() == pytest.approx(3.5)
