"""``train.py``: the LightningCLI (fit / validate / test / predict) that joins a model and the DataModule."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ser_lightning.data.shards import iter_shard_meta
from ser_lightning.data.stream.datamodule import SERDataModule
from ser_lightning.metrics.functional import js_divergence
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
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="after fit, test the best checkpoint and score the uniform and train-mean reference predictors",
        )

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
        trainer = self.trainer
        log_dir = trainer.log_dir  # a collective call under DDP: every rank asks, rank 0 writes
        if trainer.global_rank != 0:
            return
        metrics: dict[str, Any] = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "test/"))
        }
        split = self.datamodule.splits["test" if stage == "test" else "val"]
        metrics["reference"] = reference_scores(self.datamodule.shards, self.datamodule.label_source, split)
        ckpt = getattr(trainer, "ckpt_path", None)
        metrics["checkpoint"] = str(ckpt) if ckpt else None
        out = Path(log_dir or trainer.default_root_dir) / f"{stage}_metrics.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        ref = metrics["reference"]
        log.warning(
            "%s JS %.4f | uniform predictor %.4f | train-mean predictor %.4f (written to %s)",
            split,
            metrics.get("test/js", metrics.get("val/js", float("nan"))),
            ref["uniform_js"],
            ref["train_mean_js"],
            out,
        )


def reference_scores(shards: str | Path, label_source: str, split: str) -> dict[str, float]:
    """JS (bits) on ``split`` of two model-free predictors: uniform, and the train split's mean distribution."""
    train = torch.tensor([m["distribution"][label_source] for m in iter_shard_meta(shards, "train")])
    target = torch.tensor([m["distribution"][label_source] for m in iter_shard_meta(shards, split)])
    uniform = torch.full_like(target, 1.0 / target.shape[1])
    mean = train.mean(0, keepdim=True).expand_as(target)
    return {"uniform_js": float(js_divergence(uniform, target)), "train_mean_js": float(js_divergence(mean, target))}


def main(args: list[str] | None = None) -> None:
    """Run the CLI (``python train.py fit --config configs/demo.yaml``)."""
    SERLightningCLI(
        DistributionModule,
        SERDataModule,
        subclass_mode_model=True,
        auto_configure_optimizers=False,
        args=args,
        save_config_kwargs={"overwrite": True},
        trainer_defaults=copy.deepcopy(TRAINER_DEFAULTS),
        seed_everything_default=SEED,
    )
