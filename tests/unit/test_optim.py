"""NewBob's decisions on a scripted loss sequence, worked out by hand (SpeechBrain's NewBobScheduler rule)."""

from __future__ import annotations

import pytest
import torch

from ser_lightning.optim import NewBobScheduler


def _optimizer():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    return torch.optim.AdamW([{"params": [params[0]], "lr": 1e-4}, {"params": [params[1]], "lr": 1e-5}])


def test_newbob_compares_with_the_previous_epoch_not_the_best():
    opt = _optimizer()
    sched = NewBobScheduler(opt, threshold=0.0025, factor=0.9)
    # losses:   1.0 (first: no decision)  0.9 (-10%: keep)  0.8995 (-0.056% < 0.25%: anneal)
    #           0.95 (worse: anneal)      0.90 (-5.3% vs 0.95: keep; ReduceLROnPlateau would anneal vs best 0.8995)
    #           0.8990 (-0.11%: anneal)
    expected = [1.0, 1.0, 0.9, 0.81, 0.81, 0.729]
    for loss, factor in zip([1.0, 0.9, 0.8995, 0.95, 0.90, 0.8990], expected, strict=True):
        sched.step(loss)
        assert opt.param_groups[0]["lr"] == pytest.approx(1e-4 * factor)
        assert opt.param_groups[1]["lr"] == pytest.approx(1e-5 * factor)  # each group from its own rate
    assert sched.annealed == 3


def test_patience_and_the_rate_set_after_each_validation():
    opt = _optimizer()
    sched = NewBobScheduler(opt, threshold=0.0025, factor=0.5, patient=1)
    sched.step(1.0)
    opt.param_groups[1]["lr"] *= 0.8  # an unfreezing step's factor during an epoch ...
    sched.step(1.0)  # no improvement, one epoch of patience left: no anneal
    assert opt.param_groups[1]["lr"] == pytest.approx(1e-5)  # ... lasts until NewBob sets its own value
    sched.step(1.0)  # again: anneal, patience restored
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-5)
    sched.step(1.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-5)


def test_state_round_trips():
    opt = _optimizer()
    sched = NewBobScheduler(opt)
    for loss in (1.0, 0.99999):
        sched.step(loss)
    state = sched.state_dict()
    fresh = NewBobScheduler(_optimizer())
    fresh.load_state_dict(state)
    assert (fresh.previous, fresh.values, fresh.annealed) == (0.99999, sched.values, 1)
    with pytest.raises(ValueError, match="factor"):
        NewBobScheduler(opt, factor=0.0)
