"""Callbacks that keep non-finite numbers out of a run: a NaN loss or gradient stops it, a NaN metric is never best.

:class:`NonFiniteGuard` checks each optimizer step's loss(es) and gradients and raises :class:`NonFiniteError`
(naming the global step and the batch's utterance ids), so ``trainer.fit`` and ``train.py`` exit non-zero; its
``skip`` policy drops such steps instead, up to a cap. :class:`FiniteModelCheckpoint` is Lightning's
``ModelCheckpoint`` except that a NaN / infinite monitored value is never a top-k candidate (Lightning ranks a NaN
as ±inf, so a first NaN epoch became "best"), and a fit that never saw a finite value fails instead of leaving
``ckpt_path="best"`` to pick a NaN checkpoint.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

MAX_IDS_SHOWN = 32  # utterance ids named in an error; the rest are counted


class NonFiniteError(RuntimeError):
    """A loss, a gradient or the monitored metric was NaN or infinite."""


def _format_ids(ids: list[str]) -> str:
    shown = ", ".join(str(i) for i in ids[:MAX_IDS_SHOWN])
    more = f", ... ({len(ids)} in all)" if len(ids) > MAX_IDS_SHOWN else ""
    return f"[{shown}{more}]"


class NonFiniteGuard(Callback):
    """Stops training (or skips the step) when a loss or a gradient is NaN or infinite.

    The check costs one sum per parameter tensor with a gradient and one host sync per optimizer step (plus one
    tiny all-reduce under DDP, so every rank takes the same decision). Under ``16-mixed`` precision
    the GradScaler already skips steps with infinite gradients and lowers its scale, so only the loss is checked.

    Args:
        policy: ``stop`` raises :class:`NonFiniteError` at the first non-finite loss or gradient; ``skip`` drops
            that optimizer step (its gradients are set to ``None``, so the optimizer leaves the parameters and
            its moments alone), counts it (logged as ``train/nonfinite_skipped``) and raises once more than
            ``max_skipped`` steps were skipped.
        max_skipped: steps the ``skip`` policy may drop in a run before it stops anyway.
        check_gradients: also check the gradients, not only the loss.
    """

    def __init__(
        self, policy: Literal["stop", "skip"] = "stop", max_skipped: int = 10, check_gradients: bool = True
    ) -> None:
        if policy not in ("stop", "skip"):
            raise ValueError(f"policy must be 'stop' or 'skip', got {policy!r}")
        if max_skipped < 0:
            raise ValueError(f"max_skipped must be >= 0, got {max_skipped}")
        self.policy = policy
        self.max_skipped = max_skipped
        self.check_gradients = check_gradients
        self.skipped = 0
        self._batch: tuple[int, list[str]] = (-1, [])
        self._window: list[tuple[int, list[str], Tensor]] = []  # (batch_idx, ids, loss) since the last step

    # -- collecting ------------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Remember the batch's utterance ids for the error message."""
        ids = batch.get("ids", []) if isinstance(batch, dict) else []
        self._batch = (batch_idx, list(ids))

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        """Keep the loss (no host sync here: it is checked with the gradients before the step)."""
        self._window.append((*self._batch, loss.detach()))

    # -- deciding --------------------------------------------------------------------------------
    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Check the window's losses and the (unscaled) gradients; stop, or drop this step under ``skip``."""
        window, self._window = self._window, []
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        scaler = getattr(trainer.strategy.precision_plugin, "scaler", None)
        grads = [p.grad for p in params] if self.check_gradients and scaler is None else []
        flags = [torch.isfinite(loss).all() for _, _, loss in window]
        if grads:
            # a NaN / Inf element makes its tensor's sum non-finite: one cheap reduction per tensor (isfinite or a
            # max-abs norm per tensor cost 20-90x more on the demo model); huge finite values that overflow the
            # sum are told apart exactly below, on the rare failure path
            device = grads[0].device
            flags.append(torch.isfinite(torch.stack([g.detach().sum().to(device) for g in grads])).all())
        if not flags:
            return
        device = flags[0].device
        bad = not bool(torch.stack([f.to(device) for f in flags]).all())
        if bad:
            bad = any(not bool(torch.isfinite(t).all()) for t in [loss for _, _, loss in window] + grads)
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            message = self._describe(trainer, pl_module, window, params if grads else [])
            if self.policy == "stop":
                raise NonFiniteError(message)
            for p in params:
                p.grad = None  # optimizers skip parameters without a gradient: no update, no moment change
            self.skipped += 1
            rank_zero_warn(f"skipped optimizer step: {message} ({self.skipped} skipped so far)")
            if self.skipped > self.max_skipped:
                raise NonFiniteError(f"{message}; {self.skipped} non-finite steps skipped, more than "
                                     f"max_skipped={self.max_skipped}")
        if self.policy == "skip":
            pl_module.log("train/nonfinite_skipped", float(self.skipped), on_step=True, on_epoch=False)

    def _describe(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        window: list[tuple[int, list[str], Tensor]],
        params: list[torch.nn.Parameter],
    ) -> str:
        """Name the step, what was non-finite and the utterance ids (only on the failure path: syncs freely)."""
        bad_losses = [(i, ids, loss) for i, ids, loss in window if not bool(torch.isfinite(loss).all())]
        names = {id(p): n for n, p in pl_module.named_parameters()}
        bad_params = [names.get(id(p), "?") for p in params if not bool(torch.isfinite(p.grad).all())]
        what = []
        if bad_losses:
            what.append("loss " + ", ".join(f"{float(loss.float().sum())} (batch {i})" for i, _, loss in bad_losses))
        if bad_params:
            what.append(f"gradients of {len(bad_params)} parameters ({', '.join(bad_params[:5])}"
                        f"{', ...' if len(bad_params) > 5 else ''})")
        if not what:
            what.append("loss or gradients on another rank")
        culprits = bad_losses or window
        ids = [uid for _, batch_ids, _ in culprits for uid in batch_ids]
        return (f"non-finite {' and '.join(what)} at global step {trainer.global_step} (epoch "
                f"{trainer.current_epoch}); utterance ids {_format_ids(ids)}")

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The skipped count, so a resumed run keeps counting towards the same cap."""
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the skipped count."""
        self.skipped = int(state_dict.get("skipped", 0))


class FiniteModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose best / top-k never takes a NaN or infinite monitored value.

    Same arguments as Lightning's. A non-finite value is warned about and skipped (``last.ckpt`` is still saved);
    if a fit saw non-finite values and no finite one, it ends with :class:`NonFiniteError` rather than letting
    ``ckpt_path="best"`` fail with Lightning's misleading "not configured to save the best model". No checkpoint
    is written on a :class:`NonFiniteError` even with ``save_on_exception`` (its weights may be NaN).
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Lightning's setup; remember whether this pass fits (it runs before the checkpoint is restored)."""
        super().setup(trainer, pl_module, stage)
        self._fitting = stage == "fit"

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state; outside ``fit`` quietly (nothing is saved, so a changed directory does not matter).

        ``validate`` / ``test`` / ``predict`` of an older checkpoint log elsewhere than its ``checkpoints/``, and
        Lightning would warn "The dirpath has changed".
        """
        if not getattr(self, "_fitting", True):
            state_dict = {**state_dict, "dirpath": self.dirpath}
        super().load_state_dict(state_dict)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Forget the non-finite values of an earlier fit."""
        super().on_fit_start(trainer, pl_module)
        self.nonfinite_seen: list[str] = []

    def check_monitor_top_k(self, trainer: L.Trainer, current: Tensor | None = None) -> bool:
        """Lightning's top-k test, with a non-finite value never a candidate."""
        if current is not None and not bool(torch.isfinite(torch.as_tensor(current)).all()):
            seen = f"{float(current)} at epoch {trainer.current_epoch}, global step {trainer.global_step}"
            if not hasattr(self, "nonfinite_seen"):
                self.nonfinite_seen = []
            self.nonfinite_seen.append(seen)
            rank_zero_warn(f"{self.monitor!r} is {seen}: not kept as a best checkpoint")
            return False
        return super().check_monitor_top_k(trainer, current)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Lightning's save, then ``last.ckpt`` refreshed every validation, not only when a new best was kept."""
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):  # else the epoch end saves (top-k first, then last)
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Lightning's save, then ``last.ckpt`` refreshed at every epoch end that saves (as on validation end)."""
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def _refresh_last(self, trainer: L.Trainer) -> None:
        # Lightning 2.6 writes last.ckpt only in a step that also kept a top-k checkpoint, so after a hard kill
        # `--ckpt_path last` would fall back to the last improving epoch; refresh it whenever it is stale.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):  # skips a step already saved
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Fail when every monitored value was non-finite, so no NaN checkpoint is tested as "best"."""
        super().on_fit_end(trainer, pl_module)
        seen = getattr(self, "nonfinite_seen", [])
        if self.monitor and seen and not self.best_model_path:
            raise NonFiniteError(
                f"{self.monitor!r} was never finite ({'; '.join(seen)}): no best checkpoint was kept "
                f"(the final weights are in {self.last_model_path or 'no last checkpoint'})"
            )

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Lightning's save-on-exception, except after a :class:`NonFiniteError`."""
        if not isinstance(exception, NonFiniteError):
            super().on_exception(trainer, pl_module, exception)
