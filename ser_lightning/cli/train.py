"""``train.py``: the LightningCLI (fit / validate / test / predict) that joins a model and the DataModule."""

from __future__ import annotations

import copy
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from ser_lightning.cli.guards import FiniteModelCheckpoint, NonFiniteGuard
from ser_lightning.cli.preemption import PreemptionCheckpoint, exit_status, resolve_last
from ser_lightning.cli.quiet import add_default_progress_bar, silence_known_warnings
from ser_lightning.cli.rundir import place_stage_outputs
from ser_lightning.data.stream.datamodule import SERDataModule
from ser_lightning.models.base import DistributionModule
from ser_lightning.models.calibration import calibration_report
from ser_lightning.models.checkpoint import spec_from_config
from ser_lightning.models.predictions import PredictionWriter
from ser_lightning.nn.pretrained import pretrained_error

log = logging.getLogger(__name__)

# facts the model takes from the data (linked when both are instantiated)
DATA_TO_MODEL = ("num_classes", "classes", "bin_edges", "class_counts")
EVAL_STAGES = ("validate", "test", "predict")
# units of the metrics in {stage}_metrics.json: JS in bits (log base 2, bounded by 1), KL and entropy in nats
UNITS = {"js": "bits", "kl": "nats", "entropy": "nats"}

# The project's defaults for every config: a config under configs/ sets only what is specific to its experiment
# (e.g. max_epochs, precision, the run name as ``trainer.logger.init_args.name``).
SEED = 0
TRAINER_DEFAULTS: dict[str, Any] = {
    "log_every_n_steps": 20,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        # no hp_metric = -1 placeholder: the best monitored value (val/js) is logged as hp_metric after fit
        "init_args": {"save_dir": "runs", "name": "default", "default_hp_metric": False},
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
        parser.add_argument(
            "--bootstrap_samples",
            type=NonNegativeInt,
            default=10_000,
            help="test: resamples of the scored utterances for the 95%% percentile bootstrap intervals written "
            "into test_metrics.json as test/<metric>_ci95 (js, bc, r2, kl, acc, f1, wf1, uar); 0 = off",
        )
        parser.add_argument("--bootstrap_seed", type=int, default=0, help="test: seed of the bootstrap resamples")

    def before_instantiate_classes(self) -> None:
        """Choose the log directory before any trainer exists (every DDP rank must agree on it).

        ``fit --ckpt_path last``: resume the run name's newest ``last.ckpt`` and log into its version directory.
        ``validate`` / ``test`` / ``predict --ckpt_path runs/<name>/version_N/checkpoints/x.ckpt``: log into
        ``runs/<name>/version_N/<stage>-<k>`` rather than a new ``version_M`` (see ``cli.rundir``).
        """
        if self.subcommand == "fit":
            resolve_last(self.config["fit"])
        elif self.subcommand in EVAL_STAGES:
            place_stage_outputs(self.subcommand, self.config[self.subcommand])

    def instantiate_classes(self) -> None:
        """Instantiate, then hand the model's sample rate and tokenizer to the DataModule.

        A pretrained part that cannot be loaded raises ``PretrainedNotFound`` naming the config key that set it.
        """
        try:
            super().instantiate_classes()
        except Exception as exc:
            missing = pretrained_error(exc)
            if missing is None or missing.key is not None:
                raise
            config = self.config.get(str(self.subcommand), self.config)
            keys = [k for k, v in config.items() if isinstance(v, str) and v == missing.source]
            raise missing.with_key(keys[0] if keys else None) from exc
        requirements = getattr(self.model, "data_requirements", None)
        if callable(requirements):
            self.datamodule.connect(**requirements())
        set_spec = getattr(self.model, "set_model_spec", None)
        if callable(set_spec):  # how to rebuild the model, data links applied: written into every checkpoint
            section = self.config.get(str(self.subcommand), self.config)["model"]
            set_spec(spec_from_config(section, {k: getattr(self.datamodule, k, None) for k in DATA_TO_MODEL}))

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """Lightning's trainer, with a progress bar that leaves out ``v_num`` unless the config sets its own."""
        if "callbacks" not in kwargs:
            callbacks = add_default_progress_bar(self.config_init.get(str(self.subcommand), self.config_init).trainer)
            if callbacks is not None:
                kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        """Optionally test the best checkpoint right away, next to the reference predictors."""
        if self.config.get(self.subcommand, {}).get("test_after_fit"):
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best")
            self._write_metrics("test")

    def after_validate(self) -> None:
        """Write ``validate_metrics.json`` into the log directory."""
        self._write_metrics("validate")
        self._announce("validate")

    def after_test(self) -> None:
        """Write ``test_metrics.json`` (with reference predictors) into the log directory."""
        self._write_metrics("test")
        self._announce("test")

    def after_predict(self) -> None:
        """Say where the predictions went."""
        self._announce("predict")

    def _announce(self, stage: str) -> None:
        """One line on rank 0: the directory this pass wrote into (and the predictions file)."""
        trainer = self.trainer
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # collective under DDP: every rank asks
        if trainer.global_rank != 0:
            return
        writers = [c for c in trainer.callbacks if isinstance(c, PredictionWriter)] if stage == "predict" else []
        target = next((Path(w.output_path or log_dir / "predictions.jsonl") for w in writers), None)
        log.warning("%s outputs in %s%s", stage, log_dir, f" (predictions: {target})" if target else "")

    def _write_metrics(self, stage: str) -> None:
        """Write ``{stage}_metrics.json``: the logged metrics, the pass's accounting and reference predictors.

        Strict JSON (non-finite numbers become ``null``). Always ``complete``, ``expected``, ``scored`` and
        ``skipped`` (see ``DistributionModule._account``), ``evaluation`` (split, skipped samples and shard
        errors with reasons, damaged shards), ``reference`` (``uniform_js``, ``train_mean_js``: JS in bits of
        the two model-free predictors on exactly the scored samples) and ``units`` (:data:`UNITS`). A test pass
        with ``--bootstrap_samples N`` (default 10,000; 0 = off) adds ``test/<metric>_ci95: [lo, hi]``, percentile
        intervals over N resamples of the utterances gathered from every rank (``--bootstrap_seed``), overall and
        per bin (``test/bin1/js_ci95``), and ``bootstrap`` (how they were drawn). A test pass also adds
        calibration (``models.calibration``): ``test/ece`` and the coverage curve ``test/coverage10/acc`` ...
        ``test/coverage100/js``, and writes ``reliability.png``.
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
        metrics["units"] = dict(UNITS)
        config = self.config.get(str(self.subcommand), self.config)
        samples, seed = int(config.get("bootstrap_samples") or 0), int(config.get("bootstrap_seed") or 0)
        scored = getattr(self.model, "test_predictions", None)
        if stage == "test" and samples and scored is not None:  # the records every rank scored, gathered on rank 0
            intervals = scored.intervals(samples, seed, bin_edges=getattr(self.model, "bin_edges", None))
            metrics.update(intervals)
            drawn = {"method": "percentile", "level": 0.95, "resampled": "utterances", "samples": samples, "seed": seed}
            metrics["bootstrap"] = drawn if intervals else None
        out = Path(log_dir or trainer.default_root_dir) / f"{stage}_metrics.json"
        if stage == "test" and scored is not None:  # ECE, coverage curve, reliability.png + TensorBoard image
            experiment = getattr(trainer.logger, "experiment", None) if trainer.logger else None
            metrics.update(calibration_report(scored.gathered, out.parent, experiment))
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


class BestAsHpMetric(Callback):
    """TensorBoard's ``hp_metric``: the checkpoint callback's best monitored value (``val/js``) at the end of fit.

    Replaces Lightning's constant ``-1`` placeholder (``default_hp_metric`` is off in :data:`TRAINER_DEFAULTS`);
    logged in ``on_fit_end``, before the logger is finalised, so it lands in the fit's own event file.
    """

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Log the best score with the hyperparameters (TensorBoard's HPARAMS tab) and as the ``hp_metric`` scalar."""
        best = getattr(trainer.checkpoint_callback, "best_model_score", None)
        if best is None or not math.isfinite(float(best)):
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):  # log_hyperparams is rank-zero only
                logger.log_hyperparams(logger.hparams, {"hp_metric": float(best)})


def _finite(value: float | None) -> float | None:
    """``value``, or ``None`` when it is missing, NaN or infinite (strict JSON has no NaN)."""
    return value if value is not None and math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main(args: list[str] | None = None) -> None:
    """Run the CLI (``python train.py fit --config configs/demo.yaml``).

    A fit stopped by SIGTERM / SIGINT saves ``last.ckpt`` and exits with status 143 / 130 (128 + signal number).
    A pretrained model that cannot be loaded (offline, not cached) prints one line and exits with status 2.
    """
    silence_known_warnings()
    preemption = PreemptionCheckpoint()
    trainer_defaults = copy.deepcopy(TRAINER_DEFAULTS)
    trainer_defaults["callbacks"] = [preemption, BestAsHpMetric()]  # persistent: not config keys
    try:
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
    except Exception as exc:
        missing = pretrained_error(exc)
        if missing is None:
            raise
        print(missing, file=sys.stderr)
        raise SystemExit(2) from None
    _close_process_group()


def _close_process_group() -> None:
    """Destroy the DDP process group while Python still runs.

    Left to interpreter shutdown, gloo's worker threads are now and then destroyed while still joinable, and the
    process aborts after a successful run ("terminate called without an active exception", SIGABRT, exit -6).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
