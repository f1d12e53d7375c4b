"""Evaluation accounting: every sample the card lists is scored or skipped with a reason, or the pass says so.

Each rank keeps a :class:`PassTally` of one validation or test pass (batches, samples scored, samples the model
left out as invalid, the stream's skip records, and the reference predictors' JS on exactly the scored samples); at
the end of the pass every rank's tally is gathered and :func:`pass_report` compares scored + invalid + skipped with
what the card lists (:class:`EvalExpectation`). ``invalid`` samples were read and answered but had no valid
prediction (an ALM under ``invalid_fallback: exclude``, paper 003 Appendix A.2): accounted for, not missing.
A pass the trainer cut on purpose (``limit_*_batches``, ``fast_dev_run``, sanity check) is reported as incomplete
without an error; any other shortfall is named by :func:`incomplete_message` (split, counts, damaged shards).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ser_lightning.metrics.functional.distribution import js_divergence_bits_per_item
from ser_lightning.types import Batch, EvalExpectation, SkipRecord

MAX_LISTED = 100  # skipped samples / shard errors listed in a report (all are counted)


def skips_only(batch: Batch | dict[str, Any]) -> bool:
    """A batch of no samples that only carries the stream's ``skipped`` records (see ``EvalStream``)."""
    return "targets" not in batch and not batch.get("ids")


class PassTally:
    """One rank's count of one evaluation pass; :meth:`as_json` is what the ranks gather."""

    def __init__(self) -> None:
        self.batches = 0
        self.scored = 0
        self.invalid = 0
        self.skipped: list[SkipRecord] = []
        self.uniform_js = 0.0
        self.train_mean_js = 0.0
        self.read_bytes = 0

    def add_skips(self, batch: Batch | dict[str, Any]) -> None:
        """Count the batch, keep the stream's skip records it carries and the bytes its worker read."""
        self.batches += 1
        self.skipped.extend(batch.get("skipped") or [])
        self.read_bytes += int(batch.get("read_bytes") or 0)

    def add_scored(self, target: Tensor, train_mean: list[float] | None) -> None:
        """Count the scored targets ``(B, C)`` and score the uniform and train-mean predictors on exactly them."""
        target = target.detach().double()
        self.scored += target.shape[0]
        self.uniform_js += float(js_divergence_bits_per_item(torch.ones_like(target), target).sum())
        if train_mean is not None:
            ref = torch.as_tensor(train_mean, dtype=torch.float64, device=target.device).expand_as(target)
            self.train_mean_js += float(js_divergence_bits_per_item(ref, target).sum())

    def add_invalid(self, count: int) -> None:
        """Count samples the model answered without a valid prediction and left out of every metric."""
        if count < 0:
            raise ValueError(f"invalid count must be >= 0, got {count}")
        self.invalid += int(count)

    def as_json(self) -> dict[str, Any]:
        """The tally as JSON-ready values (gathered across ranks)."""
        return {
            "batches": self.batches,
            "scored": self.scored,
            "invalid": self.invalid,
            "skipped": list(self.skipped),
            "uniform_js": self.uniform_js,
            "train_mean_js": self.train_mean_js,
            "read_bytes": self.read_bytes,
        }


def pass_report(
    stage: str, tallies: list[dict[str, Any]], expectation: EvalExpectation | None, limited: bool
) -> dict[str, Any]:
    """The pass's accounting from every rank's :meth:`PassTally.as_json`.

    Keys: ``split``, ``complete``, ``limited``, ``expected``, ``scored``, ``invalid`` (answered without a valid
    prediction, in no metric), ``skipped``, ``skipped_samples`` / ``shard_errors`` (``{"key", "shard", "reason"}``, at
    most :data:`MAX_LISTED` each), ``damaged_shards`` (filled on the failure path), ``bytes_read`` (read from the
    shards' location by every rank and worker) and ``reference`` (``uniform_js``, ``train_mean_js``: JS in bits on
    the scored set).
    ``complete`` is true when every sample the card lists was scored, counted invalid or skipped with a reason and no
    shard failed while streaming; ``None`` without an expectation; false when the trainer cut the pass (``limited``).
    """
    scored = sum(t["scored"] for t in tallies)
    invalid = sum(int(t.get("invalid", 0)) for t in tallies)
    records = [r for t in tallies for r in t["skipped"]]
    samples = sorted((r for r in records if r.get("key") is not None), key=lambda r: (str(r["shard"]), r["key"]))
    shard_errors = [dict(r) for r in sorted({tuple(sorted(r.items())) for r in records if r.get("key") is None})]
    expectation = expectation or {}
    expected = expectation.get("expected")
    train_mean = expectation.get("train_mean")
    complete = None if expected is None else (scored + invalid + len(samples) == expected and not shard_errors)
    return {
        "split": expectation.get("split", stage),
        "complete": False if limited else complete,
        "limited": limited,
        "expected": expected,
        "scored": scored,
        "invalid": invalid,
        "skipped": len(samples),
        "skipped_samples": samples[:MAX_LISTED],
        "shard_errors": shard_errors[:MAX_LISTED],
        "damaged_shards": [],
        "bytes_read": sum(int(t.get("read_bytes", 0)) for t in tallies),
        "reference": {
            "uniform_js": sum(t["uniform_js"] for t in tallies) / scored if scored else None,
            "train_mean_js": (
                sum(t["train_mean_js"] for t in tallies) / scored if scored and train_mean is not None else None
            ),
        },
    }


def incomplete_message(stage: str, report: dict[str, Any]) -> str:
    """Name the split, the counts and the damaged shards of an incomplete pass (``report`` of :func:`pass_report`)."""
    shards = report["damaged_shards"] + [f"{e['shard']}: {e['reason']}" for e in report["shard_errors"]]
    invalid = f", {report['invalid']} had no valid prediction" if report.get("invalid") else ""
    return (
        f"incomplete {stage} pass over split {report['split']!r}: the card lists {report['expected']} samples, "
        f"{report['scored']} were scored{invalid} and {report['skipped']} skipped with a reason. Damaged shards: "
        + ("; ".join(shards) if shards else "none found (is the card out of date? see refresh_card)")
    )
