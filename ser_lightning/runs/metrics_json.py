"""``{stage}_metrics.json``, assembled in this one place: every number of a validation or test pass.

A pass's file holds, in strict JSON (a non-finite number is ``null``):

- the logged ``val/...`` / ``test/...`` metrics (overall, per bin, per head);
- its accounting (:mod:`ser_lightning.runs.accounting`): ``complete``, ``expected``, ``scored``, ``skipped`` and
  ``evaluation`` (split, skipped samples and shard errors with reasons, damaged shards, ``bytes_read`` from the
  shards' location);
- ``reference``: the uniform and train-mean predictors' JS in bits on exactly the scored samples;
- ``checkpoint`` (the file scored) and ``units`` (:data:`UNITS`);
- for a test pass with ``bootstrap_samples`` > 0: ``test/<metric>_ci95: [lo, hi]``, percentile intervals over
  resampled utterances, overall and per bin (``test/bin1/js_ci95``), and ``bootstrap`` (how they were drawn);
- for a test pass: calibration, ``test/ece`` and the coverage curve ``test/coverage10/acc`` ... ``test/coverage100/js``,
  with ``reliability.png`` written beside the file and added to TensorBoard.

The maths is :mod:`ser_lightning.metrics.bootstrap` and :mod:`ser_lightning.metrics.calibration`; the records are
the test pass's :class:`~ser_lightning.runs.scored_records.ScoredRecords`, gathered on rank 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ser_lightning.metrics.bootstrap import ambiguity_groups, bootstrap_intervals
from ser_lightning.metrics.calibration import (
    COVERAGES,
    expected_calibration_error,
    reliability_bins,
    selective_scores,
)
from ser_lightning.runs.figures import reliability_figure
from ser_lightning.runs.json_values import finite, strict_json, write_json
from ser_lightning.runs.names import metrics_file, reliability_file
from ser_lightning.runs.scored_records import records_as_tensors

# units of the metrics: JS in bits (log base 2, bounded by 1), KL and entropy in nats
UNITS = {"js": "bits", "jsd_nats": "nats", "kl": "nats", "entropy": "nats"}
ACCOUNTING_KEYS = ("complete", "expected", "scored", "invalid", "skipped")
CALIBRATION_BINS = 10
CI_LEVEL = 0.95


def bootstrap_entries(
    records: list[dict[str, Any]],
    num_samples: int,
    seed: int = 0,
    bin_edges: Sequence[float] | None = None,
    level: float = CI_LEVEL,
    prefix: str = "test",
) -> dict[str, Any]:
    """Percentile bootstrap intervals of the records' metrics, resampling utterances (keys under ``prefix``).

    ``{"test/js_ci95": [lo, hi], ...}`` for every metric of ``metrics.bootstrap.CI_METRICS`` (``null`` bounds where
    a score is non-finite), and with ``bin_edges`` per non-empty tertile and width bin too (``test/bin1/js_ci95``,
    ``test/wbin3/f1_ci95``); empty without records.
    """
    if not records or num_samples < 1:
        return {}
    probs, targets, entropies = records_as_tensors(records)
    groups = {"": torch.ones(probs.shape[0], dtype=torch.bool)}
    if bin_edges is not None:
        groups.update({f"{k}/": v for k, v in ambiguity_groups(entropies, probs.shape[1], bin_edges).items()})
    out: dict[str, Any] = {}
    suffix = f"_ci{round(100 * level)}"
    for group, sel in groups.items():
        if bool(sel.any()):
            found = bootstrap_intervals(probs[sel], targets[sel], num_samples, seed, level)
            out.update({f"{prefix}/{group}{name}{suffix}": strict_json(list(b)) for name, b in found.items()})
    return out


def calibration_entries(
    records: list[dict[str, Any]], out_dir: Path | None = None, experiment: Any = None, prefix: str = "test"
) -> dict[str, float | None]:
    """ECE and coverage-curve entries of the records (under ``prefix``); the reliability diagram into ``out_dir``.

    Returns ``{}`` for no records. ``experiment`` is a TensorBoard ``SummaryWriter`` (anything with ``add_figure``).
    """
    if not records:
        return {}
    probs, targets, _ = records_as_tensors(records)
    ece = expected_calibration_error(probs, targets, CALIBRATION_BINS)
    out: dict[str, float | None] = {f"{prefix}/ece": None if math.isnan(ece) else ece}
    for coverage, scores in selective_scores(probs, targets, COVERAGES).items():
        for name in ("acc", "js"):
            out[f"{prefix}/coverage{round(100 * coverage)}/{name}"] = finite(scores[name])
    if math.isnan(ece) or (out_dir is None and experiment is None):
        return out
    fig = reliability_figure(reliability_bins(probs, targets, CALIBRATION_BINS), ece)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        split = prefix.split("/", 1)[1] if "/" in prefix else None
        fig.savefig(Path(out_dir) / reliability_file(split), dpi=100)
    if experiment is not None and hasattr(experiment, "add_figure"):
        experiment.add_figure(f"{prefix}/reliability", fig, close=True)
    return out


def pass_metrics(
    stage: str,
    logged: Mapping[str, Any],
    report: Mapping[str, Any] | None,
    checkpoint: str | None = None,
    records: list[dict[str, Any]] | None = None,
    bin_edges: Sequence[float] | None = None,
    bootstrap_samples: int = 0,
    bootstrap_seed: int = 0,
    out_dir: Path | None = None,
    experiment: Any = None,
    prefix: str | None = None,
) -> dict[str, Any]:
    """Every entry of ``{stage}_metrics.json`` (see the module docstring).

    Args:
        stage: ``validate`` or ``test``.
        logged: the trainer's callback metrics (tensors or numbers); ``val/`` and ``test/`` keys are kept.
        report: the pass's accounting (``DistributionModule.eval_reports``), or ``None``.
        checkpoint: the checkpoint the pass scored.
        records: the test pass's records gathered on rank 0 (intervals and calibration); ``None`` for none.
        bin_edges: the model's entropy edges, for the per-bin intervals.
        bootstrap_samples: resamples per interval (0: none).
        bootstrap_seed: seed of the resamples.
        out_dir: where ``reliability.png`` goes.
        experiment: the TensorBoard writer the reliability diagram is added to.
        prefix: the pass's metric prefix (``test/test1`` for one of several test splits); ``None``: ``val`` / ``test``.
    """
    keep = (f"{prefix}/",) if prefix else ("val/", "test/")
    metrics: dict[str, Any] = {k: finite(float(v)) for k, v in logged.items() if k.startswith(keep)}
    evaluation = dict(report or {})
    for key in ACCOUNTING_KEYS:
        metrics[key] = evaluation.pop(key, None)
    reference = evaluation.pop("reference", {})
    metrics["reference"] = {k: finite(reference.get(k)) for k in ("uniform_js", "train_mean_js")}
    metrics["evaluation"] = evaluation
    metrics["checkpoint"] = str(checkpoint) if checkpoint else None
    metrics["units"] = dict(UNITS)
    if stage == "test" and records is not None:
        if bootstrap_samples:
            intervals = bootstrap_entries(
                records, bootstrap_samples, bootstrap_seed, bin_edges, prefix=prefix or "test"
            )
            metrics.update(intervals)
            drawn = {"method": "percentile", "level": CI_LEVEL, "resampled": "utterances",
                     "samples": bootstrap_samples, "seed": bootstrap_seed}  # fmt: skip
            metrics["bootstrap"] = drawn if intervals else None
        metrics.update(calibration_entries(records, out_dir, experiment, prefix=prefix or "test"))
    return metrics


def combined_split_metrics(passes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """One ``test_metrics.json`` of a run that tested several splits: ``{split: that pass's pass_metrics}`` joined.

    The metric keys are already prefixed ``test/<split>/``; each split's accounting, reference, evaluation and
    checkpoint go under ``splits.<split>``. Top level: the counts summed, ``complete`` false if any split's is
    (null if any is unknown), ``test_splits`` in order, ``units`` and the bootstrap description.
    """
    out: dict[str, Any] = {"test_splits": list(passes), "splits": {}}
    completes = []
    for split, metrics in passes.items():
        entry = {k: metrics.get(k) for k in (*ACCOUNTING_KEYS, "reference", "evaluation", "checkpoint")}
        out["splits"][split] = entry
        completes.append(entry["complete"])
        out.update({k: v for k, v in metrics.items() if k.startswith(f"test/{split}/")})
        out.setdefault("checkpoint", metrics.get("checkpoint"))
        out.setdefault("bootstrap", metrics.get("bootstrap"))
    for key in ACCOUNTING_KEYS[1:]:
        values = [e[key] for e in out["splits"].values() if e[key] is not None]
        out[key] = sum(values) if values else None
    out["complete"] = False if False in completes else (None if None in completes else True)
    out["units"] = dict(UNITS)
    return out


def write_pass_metrics(out_dir: str | Path, stage: str, metrics: Mapping[str, Any]) -> Path:
    """Write ``out_dir/{stage}_metrics.json`` (strict JSON); returns the path."""
    return write_json(Path(out_dir) / metrics_file(stage), dict(metrics))


def summary_line(stage: str, metrics: Mapping[str, Any], path: Path, prefix: str | None = None) -> str:
    """The one console line of a pass: its JS beside the reference predictors', the counts and the file."""
    ref = metrics["reference"]
    evaluation = metrics.get("evaluation") or {}
    split = evaluation.get("split", stage)
    read = evaluation.get("bytes_read")
    js = metrics.get(f"{prefix}/js") if prefix else metrics.get("test/js", metrics.get("val/js"))
    return (
        f"{split} JS {_fmt(js)} | uniform predictor "
        f"{_fmt(ref['uniform_js'])} | train-mean predictor {_fmt(ref['train_mean_js'])} | {metrics['scored']} of "
        f"{metrics['expected']} scored, {metrics['skipped']} skipped"
        f"{'' if metrics['complete'] else ' (INCOMPLETE)'}{'' if read is None else f', {read / 1e6:.1f} MB read'}"
        f" (written to {path})"
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
