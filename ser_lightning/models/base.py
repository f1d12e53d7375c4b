"""What every distribution-predicting LightningModule shares: per-split metrics, logging, figures, predictions.

A thin base (STYLE habit 11): subclasses implement ``forward(batch) -> (B, C) probabilities`` and
``training_loss(batch) -> dict``; everything a researcher reads in TensorBoard is produced here once.

The data facts come in through :meth:`DistributionModule.connect_data` (``ser_lightning.types.DataFacts``, handed
over by the CLI from ``SERDataModule.facts()``); the model never reads ``trainer.datamodule``.

Every validation / test pass is accounted for (:attr:`DistributionModule.eval_reports`,
:mod:`ser_lightning.runs.accounting`): the samples scored, those with no valid prediction (``invalid``: an ALM's
unparseable answers under ``invalid_fallback: exclude``) and those the stream skipped (with reasons) must add up
to the card's count for the split (the facts' ``expectations``); otherwise the run stops with an error naming
the split, the counts and the damaged shards, or with ``allow_partial_eval`` warns and reports
``complete: false``. A pass the trainer cut on purpose (``limit_*_batches``, ``fast_dev_run``, sanity
check) is reported as incomplete without an error.

Every test pass also writes ``test_predictions.jsonl`` into the log directory (one line per utterance: target,
prediction (``null`` where not scored) and the model's per-utterance extras, see
:mod:`ser_lightning.runs.scored_records`). Metrics are logged under :attr:`DistributionModule.eval_prefix`
(``test/<split>`` while the CLI tests several splits in turn).

Every checkpoint describes itself (``checkpoint["ser_lightning"]``, :mod:`ser_lightning.runs.checkpoint`: classes,
sample rate, label source, bin edges, the DataModule's input settings, the model's class path and init arguments)
and is lean: frozen pretrained parts are left out and checked against a fingerprint when loaded
(:mod:`ser_lightning.runs.frozen_parts`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from ser_lightning.metrics import WIDTH_EDGES, AmbiguityBinnedMetrics
from ser_lightning.metrics.functional.probability import entropy
from ser_lightning.runs.accounting import PassTally, incomplete_message, pass_report, skips_only
from ser_lightning.runs.checkpoint import CHECKPOINT_KEY, FORMAT, class_path
from ser_lightning.runs.figures import bin_bar_chart, confusion_figure
from ser_lightning.runs.frozen_parts import FrozenParts, check_keys, declared_parts, frozen_keys
from ser_lightning.runs.gather import gather_json
from ser_lightning.runs.json_values import plain
from ser_lightning.runs.scored_records import ScoredRecords, merge_extras
from ser_lightning.types import INPUT_SETTINGS, Batch, DataFacts, DataRequirements, EvalExpectation

log = logging.getLogger(__name__)

EVAL_STAGES = ("val", "test")


class DistributionModule(L.LightningModule):
    """Base of the models: evaluates the predicted distribution overall and per ambiguity bin.

    Args:
        num_classes: size of the class set (linked from the DataModule by the CLI).
        classes: class names, for figures and predictions (linked from the DataModule).
        bin_edges: inner entropy edges in nats for the per-bin metrics (the training card's tertiles).
    """

    def __init__(
        self, num_classes: int, classes: Sequence[str] | None = None, bin_edges: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.classes = list(classes) if classes else [f"class{i}" for i in range(num_classes)]
        if len(self.classes) != num_classes:
            raise ValueError(f"{len(self.classes)} class names for num_classes={num_classes}")
        edges = list(bin_edges) if bin_edges else []
        self.bin_edges = [float(e) for e in edges]
        self.eval_metrics = torch.nn.ModuleDict(
            {  # tertile bins (the card's edges), width bins of H / log C (paper 004), per-class F1 by name
                stage: AmbiguityBinnedMetrics(num_classes, edges, classes=self.classes, width_edges=WIDTH_EDGES)
                for stage in EVAL_STAGES
            }
        )
        self._tally: dict[str, PassTally] = {stage: PassTally() for stage in EVAL_STAGES}
        self._expectation: dict[str, EvalExpectation | None] = dict.fromkeys(EVAL_STAGES)
        self.eval_reports: dict[str, dict[str, Any]] = {}  # stage -> the last pass's accounting (see _account)
        # stage -> the prefix of its logged metrics: "test/<split>" while the CLI tests several splits in turn
        self.eval_prefix: dict[str, str] = {stage: stage for stage in EVAL_STAGES}
        self.test_predictions = ScoredRecords(self.classes)  # the test pass's records -> test_predictions.jsonl
        self.data_facts: DataFacts | None = None  # what the data told this model (connect_data)
        self._model_spec: dict[str, Any] | None = None  # {"class_path", "init_args"}: see set_model_spec
        self._frozen = FrozenParts()
        self._loaded_data: dict[str, Any] | None = None  # the data settings of the checkpoint last loaded
        # keys are checked in on_load_checkpoint: strict, except the frozen pretrained parts left out (lean)
        self.strict_loading = False

    # -- to implement ------------------------------------------------------------------------
    def forward(self, batch: Batch) -> Tensor:
        """Predicted class distributions ``(B, C)`` for a collated batch."""
        raise NotImplementedError

    def training_loss(self, batch: Batch) -> dict[str, Tensor]:
        """Loss terms for a batch; ``loss`` is the one optimised, the others are logged."""
        raise NotImplementedError

    def predict_with_details(self, batch: Batch) -> tuple[Tensor, list[dict[str, Any]] | None]:
        """(B, C) probabilities and per-utterance extra fields (e.g. raw ALM output, parse strategy) or None."""
        return self(batch), None

    def data_requirements(self) -> DataRequirements:
        """What the data side must deliver (sample rate, tokenizer, batch transform); none by default."""
        return {}

    # -- the data facts ------------------------------------------------------------------------
    def connect_data(self, facts: DataFacts) -> None:
        """Take the data facts: each pass's expectation, the input settings checkpoints record, batch bounds.

        The CLI calls it after instantiation with ``SERDataModule.facts()``; without it a pass reports
        ``complete: null`` (nothing to compare with) and checkpoints record no input settings.
        """
        self.data_facts = facts

    # -- loops -------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One optimisation step; every loss term is logged under ``train/``."""
        terms = self.training_loss(batch)
        batch_size = batch["targets"].shape[0]
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in terms.items() if k != "loss"}, batch_size=batch_size)
        return terms["loss"]

    def _eval_step(self, stage: str, batch: Batch) -> Tensor | None:
        """Predict and score the batch; returns the ``(B,)`` mask of the rows scored, ``None`` when all were.

        A row whose extras say ``"scored": false`` (an ALM's invalid answer under ``invalid_fallback: exclude``) is
        left out of every metric (``ScoredRecords.scored_rows``).
        """
        probs, extras = self.predict_with_details(batch)
        scored = ScoredRecords.scored_rows(extras, batch["targets"].device)
        self._update_eval_metrics(stage, probs, batch, extras, scored)
        return scored

    def _eval_batch(self, stage: str, batch: Batch) -> None:
        """Tally the batch (its samples and the stream's skips) and score it, unless it only carries skips."""
        tally = self._tally[stage]
        tally.add_skips(batch)
        if skips_only(batch):
            return
        scored = self._eval_step(stage, batch)  # None: every row scored (subclasses' steps return nothing)
        targets = batch["targets"]
        if scored is not None:  # rows without a valid prediction: accounted for as invalid, in no metric
            tally.add_invalid(int((~scored).sum()))
            targets = targets[scored.to(targets.device)]
        # reference predictors on exactly the scored samples: uniform, and the train split's mean distribution
        tally.add_scored(targets, (self._expectation[stage] or {}).get("train_mean"))

    def _update_eval_metrics(
        self,
        stage: str,
        probs: Tensor,
        batch: Batch,
        extras: list[dict[str, Any]] | None = None,
        scored: Tensor | None = None,
    ) -> None:
        """Score the rows of ``scored`` (all when ``None``); a test pass records every row, unscored ones as NaN."""
        targets, ent, kept = batch["targets"], batch["entropy"], probs
        if scored is not None:
            kept, targets, ent = probs[scored.to(probs.device)], targets[scored], ent[scored.to(ent.device)]
        # bins follow the target entropy stored with each sample (float64 nats), not one recomputed here
        if kept.shape[0]:
            self.eval_metrics[stage].update(kept.float(), targets.float(), ent)
        if stage == "test":
            shown = probs if scored is None else probs.masked_fill(~scored.to(probs.device)[:, None], math.nan)
            self.test_predictions.add(batch, shown, extras)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Accumulate validation metrics."""
        self._eval_batch("val", batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """Accumulate test metrics."""
        self._eval_batch("test", batch)

    def on_validation_epoch_start(self) -> None:
        """Start the pass's tally and take what it must account for from the data facts."""
        self._start_eval("val")

    def on_test_epoch_start(self) -> None:
        """Start the pass's tally and take what it must account for from the data facts."""
        self._start_eval("test")
        self.test_predictions.reset()

    def on_validation_epoch_end(self) -> None:
        """Check the pass is complete, then log val metrics overall and per bin, and the figures."""
        self._account("val")
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        """Check the pass is complete, log test metrics overall and per bin and the figures, write the predictions."""
        self._account("test")
        self._log_eval("test")
        self.test_predictions.write(self.trainer, self.device)

    # -- completeness ------------------------------------------------------------------------
    def _start_eval(self, stage: str) -> None:
        self._tally[stage] = PassTally()
        self._expectation[stage] = None if self.data_facts is None else self.data_facts.expectations.get(stage)

    def _limited(self, stage: str, batches: list[int]) -> bool:
        """Whether the trainer cut this pass on purpose (sanity check, ``limit_*_batches``, ``fast_dev_run``)."""
        if self.trainer.sanity_checking:
            return True
        limits = self.trainer.num_val_batches if stage == "val" else self.trainer.num_test_batches
        limit = limits[0] if isinstance(limits, list) and limits else limits
        return isinstance(limit, int | float) and math.isfinite(limit) and max(batches, default=0) >= limit

    def _account(self, stage: str) -> None:
        """Gather every rank's tally, set ``eval_reports[stage]`` (``runs.accounting.pass_report``), log the counts.

        An incomplete pass raises ``RuntimeError`` naming the split, the counts and the damaged shards, or under
        ``allow_partial_eval`` warns.
        """
        tallies = gather_json(self._tally[stage].as_json(), self.trainer.world_size, self.device)
        expectation = self._expectation[stage]
        limited = self._limited(stage, [t["batches"] for t in tallies])
        report = pass_report(stage, tallies, expectation, limited)
        self.eval_reports[stage] = report
        if not self.trainer.sanity_checking:
            prefix = self.eval_prefix[stage]
            for name in ("skipped", "scored"):
                self.log(f"{prefix}/{name}", float(report[name]), sync_dist=False)
            for name, value in report["reference"].items():
                if value is not None:
                    self.log(f"{prefix}/reference/{name}", value, sync_dist=False)
        if limited or report["complete"] is not False:
            return
        damaged = None if self.data_facts is None else self.data_facts.damaged_shards
        report["damaged_shards"] = damaged(report["split"]) if damaged is not None else []
        message = incomplete_message(stage, report)
        if (expectation or {}).get("allow_partial"):
            log.warning("%s (allow_partial_eval: metrics marked complete=false)", message)
            return
        raise RuntimeError(message + ". Pass --data.allow_partial_eval true to report a partial evaluation instead.")

    def _log_eval(self, stage: str) -> None:
        metric = self.eval_metrics[stage]
        if self.trainer.world_size == 1 and isinstance(metric.scores, list) and not metric.scores:
            return  # nothing was evaluated (e.g. limit_val_batches=0); under DDP every rank joins the sync
        values = metric.compute()
        # compute() is synchronised across ranks: every rank logs the same numbers
        prefix = self.eval_prefix[stage]
        self.log(f"{prefix}/js", values["js"], prog_bar=True, sync_dist=False)
        self.log_dict({f"{prefix}/{k}": v for k, v in values.items() if k != "js"}, sync_dist=False)
        if not self.trainer.sanity_checking:
            self._log_figures(stage, values, metric.confusion())
        metric.reset()

    def _log_figures(self, stage: str, values: dict[str, Tensor], confusion: Tensor) -> None:
        experiment = getattr(self.logger, "experiment", None) if self.logger else None
        if self.global_rank != 0 or not hasattr(experiment, "add_figure"):
            return
        prefix = self.eval_prefix[stage]
        experiment.add_figure(f"{prefix}/per_bin", bin_bar_chart(values), self.global_step, close=True)
        experiment.add_figure(f"{prefix}/confusion", confusion_figure(confusion.cpu(), self.classes), self.global_step)

    def new_eval_metric(self) -> AmbiguityBinnedMetrics:
        """A metric collection built like each stage's ``eval_metrics`` (bins, width bins, class names): for extras."""
        return AmbiguityBinnedMetrics(self.num_classes, self.bin_edges, classes=self.classes, width_edges=WIDTH_EDGES)

    def log_eval_metric(self, prefix: str, metric: AmbiguityBinnedMetrics) -> dict[str, Tensor] | None:
        """Compute ``metric`` (synchronised across ranks like the student's), log ``{prefix}/{key}``, reset it.

        Returns the values, or ``None`` when a single process evaluated nothing (e.g. ``limit_val_batches=0``).
        """
        if self.trainer.world_size == 1 and isinstance(metric.scores, list) and not metric.scores:
            return None
        values = metric.compute()
        self.log_dict({f"{prefix}/{k}": v for k, v in values.items()}, sync_dist=False)
        metric.reset()
        return values

    # -- optimisation ------------------------------------------------------------------------
    def parameter_groups(self, encoders: Sequence[nn.Module], lr: float, encoder_lr: float) -> list[dict[str, Any]]:
        """Trainable parameters as optimizer groups: everything else at ``lr``, then the encoders' at ``encoder_lr``.

        The encoder group is left out when every encoder parameter is frozen.
        """
        encoder_params = [p for enc in encoders for p in enc.parameters() if p.requires_grad]
        encoder_ids = {id(p) for p in encoder_params}
        other = [p for p in self.parameters() if p.requires_grad and id(p) not in encoder_ids]
        groups: list[dict[str, Any]] = [{"params": other, "lr": lr, "name": "heads"}]  # lr-AdamW/heads
        if encoder_params:
            groups.append({"params": encoder_params, "lr": encoder_lr, "name": "encoder"})
        return groups

    # -- prediction --------------------------------------------------------------------------
    def predict_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        """One record per utterance: id, classes, probabilities, entropy (nats), and the model's extra fields."""
        if skips_only(batch):
            return []
        probs, extras = self.predict_with_details(batch)
        probs = probs.float()
        ent = entropy(probs)
        rows = extras if extras is not None else [None] * len(batch["ids"])
        return [
            merge_extras({"id": uid, "classes": self.classes, "probabilities": p.tolist(), "entropy": float(h)}, x)
            for uid, p, h, x in zip(batch["ids"], probs.cpu(), ent.cpu(), rows, strict=True)
        ]

    # -- checkpoints -------------------------------------------------------------------------
    def set_model_spec(self, spec: dict[str, Any]) -> None:
        """Record how to rebuild this model: ``{"class_path", "init_args"}`` with the data links applied (the CLI).

        Without it the checkpoint holds ``type(self)`` and ``self.hparams``, which cannot rebuild a model whose
        module arguments (encoders) are left out of its hyper-parameters.
        """
        if not isinstance(spec, dict) or "class_path" not in spec:
            raise ValueError(f"a model spec is {{'class_path', 'init_args'}}, got {spec!r}")
        self._model_spec = plain({"class_path": spec["class_path"], "init_args": spec.get("init_args") or {}})

    def model_spec(self) -> dict[str, Any]:
        """``{"class_path", "init_args"}``: the one the CLI set, else this class and its saved hyper-parameters."""
        if self._model_spec is not None:
            return self._model_spec
        return {"class_path": class_path(self), "init_args": plain(dict(self.hparams))}

    def lean_parts(self) -> dict[str, dict[str, Any]]:
        """``{module prefix: {"source", ...}}``: the frozen pretrained parts left out of checkpoints."""
        return declared_parts(self)

    def stored_state(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """``state_dict`` without the frozen parameters of the lean parts: what a checkpoint stores."""
        drop = frozen_keys(self, self.lean_parts())
        return {k: v for k, v in state_dict.items() if k not in drop}

    def checkpoint_entry(self) -> dict[str, Any]:
        """The ``checkpoint["ser_lightning"]`` entry: what prediction needs without shards or config."""
        if self.data_facts is not None:
            data = plain(self.data_facts.input_settings())
        else:
            data = dict(self._loaded_data or dict.fromkeys(INPUT_SETTINGS))
        sample_rate = data.get("sample_rate")
        if sample_rate is None:
            sample_rate = self.data_requirements().get("sample_rate")
        parts = self.lean_parts()
        return {
            "format": FORMAT,
            "classes": list(self.classes),
            "num_classes": self.num_classes,
            "sample_rate": None if sample_rate is None else int(sample_rate),
            "label_source": data.get("label_source"),
            "bin_edges": list(self.bin_edges),
            "data": data,
            "model": self.model_spec(),
            "lean": self._frozen.entry(self, parts),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Write the self-describing entry and leave the frozen pretrained parts out of ``state_dict``."""
        checkpoint[CHECKPOINT_KEY] = self.checkpoint_entry()
        checkpoint["state_dict"] = self.stored_state(checkpoint["state_dict"])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the rebuilt frozen parts against their fingerprints and every other key (strict loading).

        A checkpoint without the entry (older versions) may lack this model's lean parts, unchecked.

        Raises:
            ValueError: a part the checkpoint left out is not rebuilt from a pretrained source, or differs.
            KeyError: the checkpoint lacks other parameters, or has parameters this model lacks.
        """
        entry = checkpoint.get(CHECKPOINT_KEY)
        parts = self.lean_parts()
        stored = parts if entry is None else (entry.get("lean") or {})
        if entry is not None:
            self._frozen.check(self, parts, stored)
            self._loaded_data = dict(entry.get("data") or {}) or None
            if self._model_spec is None and entry.get("model"):
                self._model_spec = entry["model"]
        state = checkpoint.get("state_dict") or {}
        check_keys(state, self.state_dict().keys(), frozen_keys(self, stored))

