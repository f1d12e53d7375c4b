"""NonFiniteGuard and FiniteModelCheckpoint on a two-parameter LightningModule: NaN losses, gradients and metrics."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from ser_lightning.callbacks.guards import FiniteModelCheckpoint, NonFiniteError, NonFiniteGuard

pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")
BATCH = 2


class _Tiny(L.LightningModule):
    """Loss NaN on the batches in ``nan_loss_at``, finite loss but NaN gradient on ``nan_grad_at``; logs ``val_js``."""

    def __init__(self, nan_loss_at=(), nan_grad_at=(), val_js=(), optimizer="sgd", huge_grad_at=()):
        super().__init__()
        self.huge_grad_at = huge_grad_at
        self.layer = nn.Linear(2, 1)
        self.nan_loss_at, self.nan_grad_at, self.val_js = nan_loss_at, nan_grad_at, val_js
        self.optimizer_name = optimizer
        self.weights: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch["x"]).pow(2).mean()
        if batch_idx in self.nan_loss_at:
            loss = loss * float("nan")
        if batch_idx in self.nan_grad_at:
            loss = loss + torch.sqrt(self.layer.weight.sum() * 0.0)  # value 0, gradient 0.5/sqrt(0) * 0 = NaN
        if batch_idx in self.huge_grad_at:
            w = self.layer.weight * 1.0
            w.register_hook(lambda g: torch.full_like(g, 3e38))  # finite, but two of them overflow a float32 sum
            loss = loss + w.sum() * 0.0
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.weights.append(self.layer.weight.detach().clone())

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        self.log("val/js", float(self.val_js[self.current_epoch]))

    def configure_optimizers(self):
        if self.optimizer_name == "adam":
            return torch.optim.Adam(self.parameters(), lr=0.1)
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(n=8):
    data = [{"x": torch.randn(2), "ids": f"utt{i:02d}"} for i in range(n)]
    return DataLoader(data, batch_size=BATCH)


def _fit(model, callbacks, tmp_path, epochs=1, precision="32-true", val=False):
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=any(isinstance(c, FiniteModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1 if val else 0,
        callbacks=callbacks,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, train_dataloaders=_loader(), val_dataloaders=_loader(2) if val else None)
    return trainer


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_nan_loss_stops_with_step_and_ids(tmp_path, precision):
    with pytest.raises(NonFiniteError, match=r"loss nan .*global step 2 .*\[utt04, utt05\]"):
        _fit(_Tiny(nan_loss_at={2}), [NonFiniteGuard()], tmp_path, precision=precision)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_nan_gradient_with_finite_loss_stops(tmp_path, precision):
    with pytest.raises(NonFiniteError, match=r"gradients of 1 parameters \(layer\.weight\).*global step 1 .*utt02"):
        _fit(_Tiny(nan_grad_at={1}), [NonFiniteGuard()], tmp_path, precision=precision)


def test_gradient_check_can_be_turned_off(tmp_path):
    model = _Tiny(nan_grad_at={3})  # the last step: no later loss sees the NaN weights
    trainer = _fit(model, [NonFiniteGuard(check_gradients=False)], tmp_path)
    assert trainer.global_step == 4
    assert not torch.isfinite(model.layer.weight).all()


def test_huge_finite_gradients_are_not_mistaken_for_nonfinite(tmp_path):
    model = _Tiny(huge_grad_at={3})
    trainer = _fit(model, [NonFiniteGuard()], tmp_path)
    assert trainer.global_step == 4
    assert torch.isfinite(model.layer.weight).all()


def test_finite_run_is_untouched(tmp_path):
    torch.manual_seed(0)
    guarded = _Tiny()
    _fit(guarded, [NonFiniteGuard()], tmp_path)
    torch.manual_seed(0)
    plain = _Tiny()
    _fit(plain, [], tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(guarded.weights, plain.weights, strict=True))


def test_skip_policy_drops_the_step_and_counts_it(tmp_path):
    model = _Tiny(nan_loss_at={1}, nan_grad_at={2}, optimizer="adam")
    guard = NonFiniteGuard(policy="skip", max_skipped=2)
    with pytest.warns(UserWarning, match="skipped optimizer step"):
        trainer = _fit(model, [guard], tmp_path)
    assert guard.skipped == 2
    assert trainer.callback_metrics["train/nonfinite_skipped"] == 2
    w = model.weights
    assert torch.equal(w[1], w[0])  # batches 1 and 2 left the weights alone
    assert torch.equal(w[2], w[0])
    assert not torch.equal(w[3], w[2])
    assert torch.isfinite(w[3]).all()
    state = trainer.optimizers[0].state[model.layer.weight]
    assert int(state["step"]) == 2  # Adam's moments only saw the two finite steps
    assert guard.state_dict() == {"skipped": 2}


def test_skip_policy_stops_past_the_cap(tmp_path):
    guard = NonFiniteGuard(policy="skip", max_skipped=1)
    with (
        pytest.warns(UserWarning, match="skipped optimizer step"),
        pytest.raises(NonFiniteError, match=r"2 non-finite steps skipped.*max_skipped=1"),
    ):
        _fit(_Tiny(nan_loss_at={0, 2}), [guard], tmp_path)


def test_guard_rejects_unknown_policy():
    with pytest.raises(ValueError, match="policy"):
        NonFiniteGuard(policy="ignore")  # type: ignore[arg-type]


def _checkpoint(tmp_path, **kwargs):
    return FiniteModelCheckpoint(
        dirpath=tmp_path / "ckpt",
        monitor="val/js",
        mode="min",
        filename="best-epoch{epoch:02d}-js{val/js:.4f}",
        auto_insert_metric_name=False,
        save_last=True,
        **kwargs,
    )


def test_nan_metric_is_never_best(tmp_path):
    checkpoint = _checkpoint(tmp_path)
    with pytest.warns(UserWarning, match="not kept as a best checkpoint"):
        _fit(_Tiny(val_js=[math.nan, 0.5, math.inf, 0.7]), [checkpoint], tmp_path, epochs=4, val=True)
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["best-epoch01-js0.5000.ckpt", "last.ckpt"]
    assert checkpoint.best_model_path.endswith("best-epoch01-js0.5000.ckpt")
    assert float(checkpoint.best_model_score) == 0.5


def test_no_finite_metric_fails_the_fit_and_keeps_no_best(tmp_path):
    checkpoint = _checkpoint(tmp_path)
    with (
        pytest.warns(UserWarning, match="not kept as a best checkpoint"),
        pytest.raises(NonFiniteError, match=r"'val/js' was never finite .*last\.ckpt"),
    ):
        _fit(_Tiny(val_js=[math.nan, math.nan]), [checkpoint], tmp_path, epochs=2, val=True)
    assert checkpoint.best_model_path == ""
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["last.ckpt"]


def test_no_checkpoint_is_saved_on_a_nonfinite_error(tmp_path):
    checkpoint = _checkpoint(tmp_path, save_on_exception=True)
    with pytest.raises(NonFiniteError):
        _fit(_Tiny(nan_loss_at={1}, val_js=[0.5]), [NonFiniteGuard(), checkpoint], tmp_path, val=True)
    assert not (tmp_path / "ckpt").exists() or not list((tmp_path / "ckpt").iterdir())
