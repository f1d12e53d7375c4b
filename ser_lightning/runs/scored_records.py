"""``test_predictions.jsonl``: every test utterance's target and prediction, for reports after the fact.

One strict-JSON object per line, sorted by id: ``id``, ``classes`` (the order of the two distributions),
``target`` (the distribution the metrics scored against), ``target_entropy`` (nats, the entropy stored with the
sample, the one the ambiguity bins use), ``probabilities`` (the prediction the metrics scored) and any
per-utterance extras of the model (an ALM's raw output and parse strategy). Non-finite numbers are written as
``null``. A row whose extras say ``"scored": false`` (an ALM's invalid answer under ``invalid_fallback: exclude``,
paper 003 Appendix A.2) was left out of every metric: it keeps its raw answer, its ``probabilities`` are ``null``,
and :func:`is_scored` tells it apart. ``ser_lightning.alm.report`` reads the file; the bootstrap intervals and
calibration of :mod:`ser_lightning.runs.metrics_json` are computed from the scored records gathered on rank 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from ser_lightning.runs.gather import gather_json
from ser_lightning.runs.json_values import strict_json
from ser_lightning.runs.names import TEST_PREDICTIONS
from ser_lightning.types import Batch

CORE_KEYS = ("id", "target", "target_entropy", "probabilities")
SCORED_KEY = "scored"  # a per-utterance extra: False leaves the row out of every metric (counted invalid)


def is_scored(record: dict[str, Any]) -> bool:
    """Whether a record (or a model's per-utterance extras) was scored: all are, unless ``"scored": false``."""
    return record.get(SCORED_KEY, True) is not False


def merge_extras(record: dict[str, Any], extras: dict[str, Any] | None) -> dict[str, Any]:
    """``record`` followed by the model's extra fields; an extra may not replace a field of the record."""
    if not extras:
        return record
    clash = sorted(set(extras) & set(record))
    if clash:
        raise ValueError(f"per-utterance extras may not overwrite the record's fields {clash}")
    return {**record, **strict_json(dict(extras))}


class ScoredRecords:
    """Collects the records of one test pass on each rank; :meth:`write` merges every rank's into one file.

    Args:
        classes: the class names, in the order of the targets' and predictions' columns (written in every row).
    """

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = list(classes)
        self.file_name = TEST_PREDICTIONS  # test_predictions_<split>.jsonl while the CLI tests several splits
        self.records: list[dict[str, Any]] = []
        # after write(): every rank's scored records (core keys only), sorted by id, on rank 0 (intervals, calibration)
        self.gathered: list[dict[str, Any]] = []

    @staticmethod
    def scored_rows(extras: list[dict[str, Any]] | None, device: Any = None) -> Tensor | None:
        """``(B,)`` bool of the rows to score from the extras' ``"scored"`` flags; ``None`` when every row is scored."""
        if not extras or all(is_scored(x or {}) for x in extras):
            return None
        return torch.tensor([is_scored(x or {}) for x in extras], dtype=torch.bool, device=device)

    def reset(self) -> None:
        """Forget the previous pass (this rank's records and the gathered ones)."""
        self.records = []
        self.gathered = []

    def add(self, batch: Batch, probs: Tensor, extras: list[dict[str, Any]] | None = None) -> None:
        """Record the batch's utterances: ``probs`` ``(B, C)`` as scored (NaN for unscored rows), ``extras`` per row."""
        ids = list(batch["ids"])
        # the float32 numbers the metrics score (AmbiguityBinnedMetrics.update gets probs.float(), targets.float())
        targets = batch["targets"].detach().float().cpu().tolist()
        entropies = batch["entropy"].detach().double().cpu().tolist()
        predicted = probs.detach().float().cpu().tolist()
        rows = extras if extras is not None else [None] * len(ids)
        if not len(ids) == len(targets) == len(entropies) == len(predicted) == len(rows):
            raise ValueError(
                f"batch of {len(ids)} ids, {len(targets)} targets, {len(entropies)} entropies, "
                f"{len(predicted)} predictions and {len(rows)} extras"
            )
        for uid, target, ent, pred, extra in zip(ids, targets, entropies, predicted, rows, strict=True):
            record = {"id": uid, "classes": self.classes, "target": target, "target_entropy": ent}
            record["probabilities"] = pred
            self.records.append(merge_extras(strict_json(record), extra))

    def write(self, trainer: L.Trainer, device: Any) -> Path | None:
        """Gather every rank's records and write them, sorted by id, on rank 0; collective: every rank calls it.

        Returns the file written (``None`` on the other ranks). The file lies in ``trainer.log_dir`` (next to
        the CLI's ``test_metrics.json``), else in ``trainer.default_root_dir``.
        """
        log_dir = trainer.log_dir  # a collective property under DDP: every rank asks
        shares = gather_json(self.records, trainer.world_size, device)
        self.reset()
        if trainer.global_rank != 0:
            return None
        records = sorted((r for share in shares for r in share), key=lambda r: str(r["id"]))
        self.gathered = [{k: r[k] for k in CORE_KEYS} for r in records if is_scored(r)]
        out = Path(log_dir or trainer.default_root_dir) / self.file_name
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in records), encoding="utf-8")
        return out


def _nan(value: Any) -> Any:
    """A record's number or list of numbers with ``None`` (a non-finite number written as null) as NaN."""
    if isinstance(value, list):
        return [_nan(x) for x in value]
    return math.nan if value is None else value


def records_as_tensors(records: list[dict[str, Any]]) -> tuple[Tensor, Tensor, Tensor]:
    """Probabilities and targets ``(N, C)`` float32 and target entropies ``(N,)`` float64 of scored records.

    The numbers the metrics scored; a ``null`` (non-finite) number becomes NaN.
    """
    probs = torch.tensor([_nan(r["probabilities"]) for r in records], dtype=torch.float32)
    targets = torch.tensor([_nan(r["target"]) for r in records], dtype=torch.float32)
    return probs, targets, torch.tensor([_nan(r["target_entropy"]) for r in records], dtype=torch.float64)
