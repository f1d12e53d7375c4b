"""``train.py``: the LightningCLI (fit / validate / test / predict) that joins a model and the DataModule."""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ser_lightning.cli.guards import FiniteModelCheckpoint, NonFiniteGuard
from ser_lightning.cli.preemption import PreemptionCheckpoint, exit_status, resolve_last
from ser_lightning.data.stream.datamodule import SERDataModule
from ser_lightning.models.base import DistributionModule
from ser_lightning.models.predictions import PredictionWriter

log = logging.getLogger(__name__)

# facts the model takes from the data (linked when both are instantiated)
DATA_TO_MODEL = ("num_classes", "classes", "bin_edges", "class_counts")

# The project's defaults for every config: a config under configs/ sets only what is specific to its experiment
# (e.g. max_epochs, precision, the run name as ``trainer.logger.init_args.name``).
SEED = 0
TRAINER_DEFAULTS: dict[str, Any] = {
    "log_every_n_steps": 20,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "runs", "name": "default"},
    },
}
# keep the best checkpoint on validation JS (lower is better) and the last one
CHECKPOINT_DEFAULTS: dict[str, Any] = {
    "checkpoint.monitor": "val/js",
    "checkpoint.mode": "min",
    "checkpoint.filename": "best-epoch{epoch:02d}-js{val/js:.4f}",
    "checkpoint.auto_insert_metric_name": False,
    "checkpoint.save_last": True,
}


class SERLightningCLI(LightningCLI):
    """LightningCLI with the data -> model links, best-``val/js`` checkpoints, LR logging and predictions."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link data facts into the model and add the project's callbacks as config sections."""
        for name in DATA_TO_MODEL:
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
        parser.add_lightning_class_args(FiniteModelCheckpoint, "checkpoint")  # a NaN val/js is never best
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")  # a NaN loss / gradient stops the run
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="after fit, test the best checkpoint and score the uniform and train-mean reference predictors",
        )

    def before_instantiate_classes(self) -> None:
        """``fit --ckpt_path last``: resume the run name's newest ``last.ckpt`` and log into its version directory."""
        if self.subcommand == "fit":
            resolve_last(self.config["fit"])

    def instantiate_classes(self) -> None:
        """Instantiate, then hand the model's sample rate and tokenizer to the DataModule."""
        super().instantiate_classes()
        requirements = getattr(self.model, "data_requirements", None)
        if callable(requirements):
            self.datamodule.connect(**requirements())

    def after_fit(self) -> None:
        """Optionally test the best checkpoint right away, next to the reference predictors."""
        if self.config.get(self.subcommand, {}).get("test_after_fit"):
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best")
            self._write_metrics("test")

    def after_validate(self) -> None:
        """Write ``validate_metrics.json`` into the log directory."""
        self._write_metrics("validate")

    def after_test(self) -> None:
        """Write ``test_metrics.json`` (with reference predictors) into the log directory."""
        self._write_metrics("test")

    def _write_metrics(self, stage: str) -> None:
        """Write ``{stage}_metrics.json``: the logged metrics, the pass's accounting and reference predictors.

        Strict JSON (non-finite numbers become ``null``). Always ``complete``, ``expected``, ``scored`` and
        ``skipped`` (see ``DistributionModule._account``), ``evaluation`` (split, skipped samples and shard
        errors with reasons, damaged shards) and ``reference`` (``uniform_js``, ``train_mean_js``: JS in bits of
        the two model-free predictors on exactly the scored samples).
        """
        trainer = self.trainer
        log_dir = trainer.log_dir  # a collective call under DDP: every rank asks, rank 0 writes
        if trainer.global_rank != 0:
            return
        metrics: dict[str, Any] = {
            k: _finite(float(v)) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "test/"))
        }
        report = dict(getattr(self.model, "eval_reports", {}).get("test" if stage == "test" else "val") or {})
        for key in ("complete", "expected", "scored", "skipped"):
            metrics[key] = report.pop(key, None)
        reference = report.pop("reference", {})
        metrics["reference"] = {k: _finite(reference.get(k)) for k in ("uniform_js", "train_mean_js")}
        metrics["evaluation"] = report
        ckpt = getattr(trainer, "ckpt_path", None)
        metrics["checkpoint"] = str(ckpt) if ckpt else None
        out = Path(log_dir or trainer.default_root_dir) / f"{stage}_metrics.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2, sort_keys=True, allow_nan=False) + "\n", encoding="utf-8")
        ref = metrics["reference"]
        log.warning(
            "%s JS %s | uniform predictor %s | train-mean predictor %s | %s of %s scored, %s skipped%s (written to %s)",
            report.get("split", stage),
            _fmt(metrics.get("test/js", metrics.get("val/js"))),
            _fmt(ref["uniform_js"]),
            _fmt(ref["train_mean_js"]),
            metrics["scored"],
            metrics["expected"],
            metrics["skipped"],
            "" if metrics["complete"] else " (INCOMPLETE)",
            out,
        )


def _finite(value: float | None) -> float | None:
    """``value``, or ``None`` when it is missing, NaN or infinite (strict JSON has no NaN)."""
    return value if value is not None and math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main(args: list[str] | None = None) -> None:
    """Run the CLI (``python train.py fit --config configs/demo.yaml``).

    A fit stopped by SIGTERM / SIGINT saves ``last.ckpt`` and exits with status 143 / 130 (128 + signal number).
    """
    preemption = PreemptionCheckpoint()
    trainer_defaults = copy.deepcopy(TRAINER_DEFAULTS)
    trainer_defaults["callbacks"] = [preemption]  # persistent: not a config key
    with exit_status(preemption):
        SERLightningCLI(
            DistributionModule,
            SERDataModule,
            subclass_mode_model=True,
            auto_configure_optimizers=False,
            args=args,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=trainer_defaults,
            seed_everything_default=SEED,
        )
    _close_process_group()


def _close_process_group() -> None:
    """Destroy the DDP process group while Python still runs.

    Left to interpreter shutdown, gloo's worker threads are now and then destroyed while still joinable, and the
    process aborts after a successful run ("terminate called without an active exception", SIGABRT, exit -6).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
