"""Gradual unfreezing of the encoder's top transformer layers on a per-epoch schedule (paper 004's authors).

Theirs (``zahraomidi/MSP-PODCAST_WavLM``, ``utils/unfreeze_controller.py`` ``_apply_gradual_unfreeze``, called at the
start of each training epoch from ``train_ser.py`` ``on_stage_start``; schedule in ``hparams/wavlm_ser_example.yaml``
``unfreeze_steps``): the whole SSL model starts frozen, then at epochs 1 / 2 / 4 / 8 (SpeechBrain counts epochs from
1) the top 2 / 4 / 8 / 12 transformer layers train, and at each such step the backbone's learning rate is multiplied
by the step's ``lr_factor`` (1.0 / 0.9 / 0.8 / 0.7). Everything below the layers (convolutional encoder, feature
projection, positional convolution) never trains: build the encoder with ``freeze: below_layers``.

DDP-safe: which parameters require grad never changes (DDP registers them once). A layer not yet unfrozen takes part
in the backward pass, but its gradients are dropped (``grad = None``) before every optimizer step and before
gradient clipping (``on_before_optimizer_step``), so AdamW neither moves nor decays it nor keeps moments for it,
exactly as for the authors' ``requires_grad = False`` parameters; the cost is the backward pass through those layers.

Each epoch logs ``train/unfreeze/layers`` (layers training), ``train/unfreeze/lr_factor`` (the factor applied at its
start, 1 without a step) and ``train/unfreeze/encoder_lr`` (the backbone's rate it started with). The state (the
last epoch whose factor was applied) is in the checkpoint, so a run resumed mid-epoch does not apply a factor twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

import lightning as L
import torch
from torch import nn


class UnfreezeStep(TypedDict):
    """One step of the schedule: from ``epoch`` (1 = the first training epoch) the top ``layers`` layers train."""

    epoch: int
    layers: int
    lr_factor: float


class GradualUnfreezing(L.Callback):
    """Unfreezes the top transformer layers of ``pl_module.<module>`` on the authors' schedule (defaults: theirs).

    Args:
        steps: the schedule, ``{"epoch", "layers", "lr_factor"}`` each; epochs count from 1 as the authors' do
            (``epoch: 1`` is Lightning's epoch 0). A step that would not add layers is ignored, as theirs.
        heads_only_epochs: epochs 1 .. N train the heads only, and steps at those epochs never apply (their
            ``freeze_head_epochs``, 0).
        max_layers: at most this many layers train (their ``max_unfrozen_layers``); ``None``: all of them.
        module: the attribute of the LightningModule holding the encoder (with ``transformer_layers()``).
        param_group: the ``name`` of the optimizer group whose rate the factors scale (the encoder's).
    """

    def __init__(
        self,
        steps: Sequence[UnfreezeStep] = (
            {"epoch": 1, "layers": 2, "lr_factor": 1.0},
            {"epoch": 2, "layers": 4, "lr_factor": 0.9},
            {"epoch": 4, "layers": 8, "lr_factor": 0.8},
            {"epoch": 8, "layers": 12, "lr_factor": 0.7},
        ),
        heads_only_epochs: int = 0,
        max_layers: int | None = None,
        module: str = "audio_encoder",
        param_group: str = "encoder",
    ) -> None:
        self.steps = sorted((_checked(s) for s in steps), key=lambda s: s["epoch"])
        if heads_only_epochs < 0 or (max_layers is not None and max_layers < 0):
            raise ValueError("heads_only_epochs and max_layers must be >= 0")
        self.heads_only_epochs = heads_only_epochs
        self.max_layers = max_layers
        self.module = module
        self.param_group = param_group
        self.applied_epoch = -1  # the last Lightning epoch whose factors were applied (checkpointed)
        self.layers = 0  # layers training this epoch
        self.factor = 1.0  # the factor applied at the start of this epoch
        self.start_lr = float("nan")
        self._frozen: list[nn.Parameter] = []

    def layers_at(self, epoch: int, total: int) -> int:
        """Layers training in the authors' epoch ``epoch`` (1-based) of an encoder of ``total`` layers."""
        cap = total if self.max_layers is None else min(self.max_layers, total)
        if epoch <= self.heads_only_epochs:
            return 0
        reached = [s["layers"] for s in self.steps if self.heads_only_epochs < s["epoch"] <= epoch]
        return min(max(reached, default=0), cap)

    def factors_at(self, epoch: int, total: int) -> list[float]:
        """The factors applied at the start of ``epoch`` (1-based): each step there that adds layers, in order."""
        factors, count = [], self.layers_at(epoch - 1, total)
        for step in self.steps:
            cap = total if self.max_layers is None else min(self.max_layers, total)
            if step["epoch"] == epoch and epoch > self.heads_only_epochs and min(step["layers"], cap) > count:
                count = min(step["layers"], cap)
                factors.append(step["lr_factor"])
        return factors

    # -- hooks ---------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check that the layers train (the encoder built with ``freeze: below_layers`` or ``none``)."""
        layers = self._layers(pl_module)
        if not all(p.requires_grad for p in layers.parameters()):
            raise ValueError(
                f"GradualUnfreezing: {self.module}'s transformer layers are frozen; build the encoder with "
                "freeze: below_layers (their schedule decides when each layer trains)"
            )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Set the epoch's trainable layers and, once per epoch, scale the encoder group's rate by the factors."""
        layers = self._layers(pl_module)
        epoch = trainer.current_epoch + 1  # the authors' count
        self.layers = self.layers_at(epoch, len(layers))
        self._frozen = [p for layer in layers[: len(layers) - self.layers] for p in layer.parameters()]
        group = self._group(trainer)
        self.factor = 1.0
        if self.applied_epoch != trainer.current_epoch:
            for factor in self.factors_at(epoch, len(layers)):
                group["lr"] *= factor  # theirs: _adjust_ssl_lr -> _scale_group_lr
                self.factor *= factor
            self.applied_epoch = trainer.current_epoch
        self.start_lr = float(group["lr"])

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Drop the gradients of the layers not yet unfrozen (after DDP's all-reduce, before clipping and the step)."""
        for p in self._frozen:
            p.grad = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the epoch's layers, factor and starting encoder rate (the same on every rank)."""
        values = {"layers": float(self.layers), "lr_factor": self.factor, "encoder_lr": self.start_lr}
        pl_module.log_dict({f"train/unfreeze/{k}": v for k, v in values.items()}, on_epoch=True, sync_dist=False)

    def state_dict(self) -> dict[str, Any]:
        """The last epoch whose factors were applied (a resumed epoch does not apply them again)."""
        return {"applied_epoch": self.applied_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.applied_epoch = int(state_dict.get("applied_epoch", -1))

    # -- helpers -------------------------------------------------------------------------------
    def _layers(self, pl_module: L.LightningModule) -> nn.ModuleList:
        encoder = getattr(pl_module, self.module, None)
        if encoder is None or not hasattr(encoder, "transformer_layers"):
            raise AttributeError(f"GradualUnfreezing: the module has no {self.module!r} with transformer_layers()")
        return encoder.transformer_layers()

    def _group(self, trainer: L.Trainer) -> dict[str, Any]:
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                if group.get("name") == self.param_group:
                    return group
        raise ValueError(f"GradualUnfreezing: no optimizer parameter group named {self.param_group!r}")


def _checked(step: Any) -> UnfreezeStep:
    """A schedule step with its types checked (``epoch`` >= 1, ``layers`` >= 0, ``lr_factor`` > 0)."""
    try:
        out: UnfreezeStep = {
            "epoch": int(step["epoch"]),
            "layers": int(step["layers"]),
            "lr_factor": float(step.get("lr_factor", 1.0)),
        }
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"an unfreeze step is {{epoch, layers, lr_factor}}, got {step!r}") from err
    if out["epoch"] < 1 or out["layers"] < 0 or out["lr_factor"] <= 0:
        raise ValueError(f"unfreeze step {step!r}: epoch >= 1, layers >= 0 and lr_factor > 0 are required")
    return out
