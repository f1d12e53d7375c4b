"""``train.py``: the LightningCLI (fit / validate / test / predict) that joins a model and the DataModule."""

from __future__ import annotations

import copy
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.environments import SLURMEnvironment

from ser_lightning.callbacks.console import add_default_progress_bar, silence_known_warnings
from ser_lightning.callbacks.guards import FiniteModelCheckpoint, NonFiniteGuard
from ser_lightning.callbacks.hp_metric import BestAsHpMetric
from ser_lightning.callbacks.prediction_writer import PredictionWriter
from ser_lightning.callbacks.preemption import PreemptionCheckpoint, exit_status
from ser_lightning.data.stream.datamodule import SERDataModule
from ser_lightning.models.base import DistributionModule
from ser_lightning.nn.pretrained import pretrained_error
from ser_lightning.runs.checkpoint import spec_from_config
from ser_lightning.runs.metrics_json import combined_split_metrics, pass_metrics, summary_line, write_pass_metrics
from ser_lightning.runs.names import scored_predictions_file
from ser_lightning.runs.run_dirs import mark_fit_complete, place_stage_outputs, resolve_last
from ser_lightning.types import LINKED_FACTS

log = logging.getLogger(__name__)

EVAL_STAGES = ("validate", "test", "predict")
PARENT_HEADER = re.compile(r"^#\s*parent:\s*(\S+)\s*$")  # "# parent: amber2.yaml" in a config's leading comments

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


def config_parent(path: Path) -> Path | None:
    """The config that ``path`` is an overlay of (its ``# parent:`` header line, relative to it), or ``None``."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None  # not a readable file: jsonargparse reports it
    for line in lines:
        if not line.startswith("#"):
            break  # the header is the leading comment block
        match = PARENT_HEADER.match(line)
        if match:
            return path.parent / match.group(1)
    return None


def with_parents(args: list[str]) -> list[str]:
    """``args`` with each overlay config's parent inserted as a ``--config`` before it, unless given earlier.

    ``--config configs/amber2_cbce.yaml`` (``# parent: amber2.yaml``) runs as ``--config configs/amber2.yaml
    --config configs/amber2_cbce.yaml``, so an overlay config is a whole experiment on its own.
    """
    out: list[str] = []
    given: set[Path] = set()
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" and i + 1 < len(args):
            value, step = args[i + 1], 2
        elif arg.startswith("--config="):
            value, step = arg.split("=", 1)[1], 1
        else:
            out.append(arg)
            i += 1
            continue
        parents: list[Path] = []
        parent = config_parent(Path(value))
        while parent is not None and parent.resolve() not in given and parent not in parents:
            parents.insert(0, parent)
            parent = config_parent(parent)
        for path in parents:
            out += ["--config", str(path)]
            given.add(path.resolve())
        out += args[i : i + step]
        given.add(Path(value).resolve())
        i += step
    return out


class SERLightningCLI(LightningCLI):
    """LightningCLI with the data -> model links, best-``val/js`` checkpoints, LR logging and predictions."""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Lightning's parsing, with overlay configs preceded by their parents (:func:`with_parents`).

        Command-line arguments are expanded in ``sys.argv`` itself, so the DDP launcher's other ranks (which re-run
        ``sys.argv``) parse the same configs.
        """
        if args is None:
            sys.argv[1:] = with_parents(sys.argv[1:])
        elif isinstance(args, list | tuple):
            args = with_parents(list(args))
        super().parse_arguments(parser, args)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link data facts into the model and add the project's callbacks as config sections."""
        for name in LINKED_FACTS:
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

        ``fit --ckpt_path last``: resume the run name's newest ``last.ckpt`` and log into its version directory;
        ``--ckpt_path auto``: the same for an interrupted run of the name, else a new run (``runs.run_dirs``).
        ``validate`` / ``test`` / ``predict --ckpt_path runs/<name>/version_N/checkpoints/x.ckpt``: log into
        ``runs/<name>/version_N/<stage>-<k>`` rather than a new ``version_M`` (see ``runs.run_dirs``).
        """
        if self.subcommand == "fit":
            resolve_last(self.config["fit"])
        elif self.subcommand in EVAL_STAGES:
            place_stage_outputs(self.subcommand, self.config[self.subcommand])

    def instantiate_classes(self) -> None:
        """Instantiate, then connect the two: the model's requirements to the DataModule, the data facts to the model.

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
        self.datamodule.connect(**self.model.data_requirements())
        facts = self.datamodule.facts()
        self.model.connect_data(facts)
        # how to rebuild the model, data links applied: written into every checkpoint
        section = self.config.get(str(self.subcommand), self.config)["model"]
        self.model.set_model_spec(spec_from_config(section, facts.linked()))

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """Lightning's trainer, with a progress bar that leaves out ``v_num`` unless the config sets its own.

        In a Slurm job, Lightning's own requeue handler is switched off (``SLURMEnvironment(auto_requeue=False)``,
        unless the config sets ``trainer.plugins``): ``PreemptionCheckpoint`` owns the pre-emption signals.
        """
        trainer_config = self.config_init.get(str(self.subcommand), self.config_init).trainer
        if "callbacks" not in kwargs:
            callbacks = add_default_progress_bar(trainer_config)
            if callbacks is not None:
                kwargs["callbacks"] = callbacks
        if "plugins" not in kwargs and not trainer_config.get("plugins") and _slurm_tasks():
            kwargs["plugins"] = [SLURMEnvironment(auto_requeue=False)]
        return super().instantiate_trainer(**kwargs)

    def after_fit(self) -> None:
        """Optionally test the best checkpoint right away; then mark the run's fit finished (``--ckpt_path auto``)."""
        if self.config.get(self.subcommand, {}).get("test_after_fit"):
            self.test(model=self.model, datamodule=self.datamodule, ckpt_path="best")
            self._write_metrics("test")
        trainer = self.trainer
        log_dir = trainer.log_dir or trainer.default_root_dir  # collective under DDP: every rank asks
        if trainer.global_rank == 0:
            mark_fit_complete(log_dir, trainer.current_epoch, trainer.global_step)

    def after_validate(self) -> None:
        """Write ``validate_metrics.json`` into the log directory."""
        self._write_metrics("validate")
        self._announce("validate")

    def test(self, **kwargs: Any) -> None:
        """``trainer.test`` once per test split (``data.test_split: [test1, test2]``), else once as Lightning does.

        With several splits each pass streams one split, accounts for it and logs under ``test/<split>/``
        (predictions into ``test_predictions_<split>.jsonl``); their metrics are joined into one
        ``test_metrics.json`` (:func:`~ser_lightning.runs.metrics_json.combined_split_metrics`).
        """
        datamodule, model = self.datamodule, self.model
        splits = list(getattr(datamodule, "test_splits", None) or [None])
        self._test_passes: dict[str, dict[str, Any] | None] = {}
        if len(splits) == 1:
            self.trainer.test(**kwargs)
            return
        try:
            for split in splits:
                datamodule.use_test_split(split)
                model.connect_data(datamodule.facts())  # the expectation of this split
                model.eval_prefix["test"] = f"test/{split}"
                model.test_predictions.file_name = scored_predictions_file(split)
                self.trainer.test(**kwargs)
                # every rank keeps the key (rank 0 the metrics): _write_metrics then takes the same path everywhere
                self._test_passes[split] = self._pass_metrics("test", prefix=f"test/{split}")
        finally:
            datamodule.use_test_split(splits[0])
            model.connect_data(datamodule.facts())
            model.eval_prefix["test"] = "test"
            model.test_predictions.file_name = scored_predictions_file()

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
        target = next((w.target(log_dir) for w in writers), None)
        log.warning("%s outputs in %s%s", stage, log_dir, f" (predictions: {target})" if target else "")

    def _write_metrics(self, stage: str) -> None:
        """Write ``{stage}_metrics.json`` (:mod:`ser_lightning.runs.metrics_json`) on rank 0 and log its summary line.

        A test pass adds bootstrap intervals (``--bootstrap_samples``, ``--bootstrap_seed``) and calibration; the
        passes of several test splits (:meth:`test`) are joined into one file.
        """
        trainer = self.trainer
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a collective call under DDP: every rank asks
        passes = getattr(self, "_test_passes", None) if stage == "test" else None
        if passes:
            if trainer.global_rank == 0:
                out = write_pass_metrics(log_dir, stage, combined_split_metrics(passes))
                for split, metrics in passes.items():  # type: ignore[union-attr]
                    log.warning("%s", summary_line(stage, metrics, out, prefix=f"test/{split}"))
            return
        metrics = self._pass_metrics(stage)
        if metrics is not None:
            out = write_pass_metrics(log_dir, stage, metrics)
            log.warning("%s", summary_line(stage, metrics, out))

    def _pass_metrics(self, stage: str, prefix: str | None = None) -> dict[str, Any] | None:
        """The pass's ``pass_metrics`` on rank 0 (``None`` on the others); ``prefix`` of one of several test splits."""
        trainer = self.trainer
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a collective call under DDP: every rank asks
        if trainer.global_rank != 0:
            return None
        config = self.config.get(str(self.subcommand), self.config)
        model = self.model
        experiment = getattr(trainer.logger, "experiment", None) if trainer.logger else None
        return pass_metrics(
            stage,
            trainer.callback_metrics,
            model.eval_reports.get("test" if stage == "test" else "val"),
            checkpoint=getattr(trainer, "ckpt_path", None),
            records=model.test_predictions.gathered if stage == "test" else None,
            bin_edges=model.bin_edges,
            bootstrap_samples=int(config.get("bootstrap_samples") or 0),
            bootstrap_seed=int(config.get("bootstrap_seed") or 0),
            out_dir=log_dir,
            experiment=experiment,
            prefix=prefix,
        )


def _slurm_tasks() -> bool:
    """Whether this process is a task of a Slurm job step (Lightning's ``SLURMEnvironment.detect`` rule, quietly)."""
    return "SLURM_NTASKS" in os.environ and SLURMEnvironment.job_name() not in ("bash", "interactive")


class _ConfigOnly(SERLightningCLI):
    """The CLI's parser and parsed config, with nothing instantiated or run (see :func:`parse_config`)."""

    def _set_seed(self) -> None:
        """No global seed is set (the runs set their own)."""

    def before_instantiate_classes(self) -> None:
        """No run directory is chosen."""

    def instantiate_classes(self) -> None:
        """Nothing is instantiated."""

    def _run_subcommand(self, subcommand: str) -> None:
        """Nothing runs."""


def parse_config(args: list[str]) -> Any:
    """The subcommand's config ``train.py args`` would run with (configs in order, then overrides), not instantiated.

    ``args`` start with the subcommand, e.g. ``["fit", "--config", "configs/amber2.yaml", "--data.shards", "x"]``;
    returns its namespace (``config.data.shards``). Parsed by the real CLI parser, so nested config files, links and
    defaults are what a run gets; an invalid config exits as ``train.py`` would.
    """
    cli = _ConfigOnly(**cli_arguments(args, copy.deepcopy(TRAINER_DEFAULTS)))
    return cli.config[cli.subcommand]


def cli_arguments(args: list[str] | None, trainer_defaults: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments both :func:`main` and :func:`parse_config` build the CLI with."""
    return {
        "model_class": DistributionModule,
        "datamodule_class": SERDataModule,
        "subclass_mode_model": True,
        "auto_configure_optimizers": False,
        "args": args,
        "save_config_kwargs": {"overwrite": True},
        "trainer_defaults": trainer_defaults,
        "seed_everything_default": SEED,
    }


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
            SERLightningCLI(**cli_arguments(args, trainer_defaults))
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
