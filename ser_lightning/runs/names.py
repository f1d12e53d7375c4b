"""The names of what a run writes, in one place: every module that writes or reads a run's files uses these.

A run directory (``runs/<name>/version_N/``, an evaluation's ``<stage>-<k>/`` inside it, or a ``ser-experiment``
run ``OUT/fold{f}_seed{s}/``) holds:

- ``{stage}_metrics.json`` (:func:`metrics_file`): every number of a validation or test pass (``runs.metrics_json``);
- ``test_predictions.jsonl``: each scored test utterance's target and prediction (``runs.scored_records``);
  ``test_predictions_<split>.jsonl`` per split when a run tests several (``data.test_split: [test1, test2]``);
- ``predictions.jsonl``: what ``predict`` wrote (``callbacks.prediction_writer``);
- ``reliability.png``: the test pass's reliability diagram;
- ``checkpoints/`` with ``last.ckpt`` and the best ones, and for Qwen2-Audio ``best_adapter/`` / ``last_adapter/``;
- ``fit_complete.json`` once its fit finished (``--ckpt_path auto`` resumes only runs without it).

A ``ser-experiment`` directory adds ``protocol.json``, ``folds/fold{f}.json`` and ``summary.{json,md,csv}``.
"""

from __future__ import annotations

TEST_PREDICTIONS = "test_predictions.jsonl"
PREDICTIONS = "predictions.jsonl"
RELIABILITY_FIGURE = "reliability.png"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"  # Lightning's ModelCheckpoint.CHECKPOINT_NAME_LAST + FILE_EXTENSION
FIT_COMPLETE = "fit_complete.json"  # in a run directory whose fit finished: --ckpt_path auto does not resume it
# the peft adapter directory written next to the checkpoint a ModelCheckpoint attribute names
ADAPTER_DIRS = {"best_model_path": "best_adapter", "last_model_path": "last_adapter"}
ADAPTER_HEAD_WEIGHTS = "head.safetensors"  # in an adapter directory, beside peft's files: the distribution head
ADAPTER_HEAD_SPEC = "head.json"
PROTOCOL = "protocol.json"
FOLDS_DIR = "folds"
SUMMARY_STEM = "summary"  # summary.json, summary.md, summary.csv
GRID = "grid.json"  # a ser-experiment grid's cells


def metrics_file(stage: str) -> str:
    """``{stage}_metrics.json``: ``validate_metrics.json`` or ``test_metrics.json``."""
    return f"{stage}_metrics.json"


def scored_predictions_file(split: str | None = None) -> str:
    """``test_predictions.jsonl``, or ``test_predictions_<split>.jsonl`` for one of several test splits of a run."""
    return TEST_PREDICTIONS if split is None else f"test_predictions_{split}.jsonl"


def reliability_file(split: str | None = None) -> str:
    """``reliability.png``, or ``reliability_<split>.png`` for one of several test splits of a run."""
    return RELIABILITY_FIGURE if split is None else f"reliability_{split}.png"


def experiment_run(fold: int, seed: int) -> str:
    """``fold{f}_seed{s}``: the run directory of one fold x seed in a ``ser-experiment`` directory."""
    return f"fold{fold}_seed{seed}"


def fold_assignment(fold: int) -> str:
    """``fold{f}.json`` in a ``ser-experiment`` directory's ``folds/``: the fold's split assignment."""
    return f"fold{fold}.json"


TEST_METRICS = metrics_file("test")
