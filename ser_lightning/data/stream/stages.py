"""What each stage of a run streams from a shard directory: its shards, its sample counts, the training set's facts.

A stage (``train``, ``val``, ``test``, ``predict``) reads one split of the card, or, under a ``split_assignment``
(``ser-experiment``'s folds), the samples of every split whose id the assignment gives that set. :class:`StageSets`
answers for both from one reading of ``card.json`` (and, for an assignment, one scan of the samples' JSON): the
shards a stage reads, how many samples it must account for, and the training set's bin edges, class counts and
mean distribution that the model receives.
"""

from __future__ import annotations

import logging
from typing import Any

from ser_lightning.data.shards import storage
from ser_lightning.data.shards.card import CARD_NAME, check_label_rule, iter_shard_meta, label_source_stats, read_card
from ser_lightning.data.shards.storage import Location, RetryPolicy
from ser_lightning.data.shards.verify import verify_shards
from ser_lightning.data.shards.writer import sample_key
from ser_lightning.data.stream.assigned import read_assignment, scan_assignment
from ser_lightning.data.stream.shard_reader import ShardAccess
from ser_lightning.types import EvalExpectation

log = logging.getLogger(__name__)


class StageSets:
    """The shards and sample counts of each stage of one shard directory, and the training set's label facts.

    Args:
        shards: directory with ``card.json`` and the ``{split}-NNNNNN.tar`` shards.
        label_source: the vote source used as target (checked against the card on first read).
        splits: the card split of each evaluation stage: ``{"val": ..., "test": ..., "predict": ...}``.
        split_assignment: JSON file ``{id: "train" | "val" | "test"}`` overriding the card's splits, or ``None``.
    """

    def __init__(
        self, shards: Location, label_source: str, splits: dict[str, str], split_assignment: str | None = None
    ) -> None:
        self.shards = storage.as_location(shards)  # a local Path, or a URL (s3://, gs://, http(s)://)
        self.label_source = label_source
        self.splits = splits  # the DataModule's own dict: a change there (e.g. a test's) is seen here
        self.split_assignment = split_assignment
        self._card: dict[str, Any] | None = None
        self._label_stats: dict[str, Any] | None = None
        self._assigned: dict[str, Any] | None = None

    # ---------------------------------------------------------------- the card
    @property
    def card(self) -> dict[str, Any]:
        """The shard directory's ``card.json``, read once, checked to list ``label_source`` (and ``merged``'s rule)."""
        if self._card is None:
            card = read_card(self.shards, self.label_source)
            where = storage.join(self.shards, CARD_NAME)
            check_label_rule(card, self.label_source, where)  # an old-rule merged: re-run ser-prepare
            self._card = card
        return self._card

    def label_stats(self) -> dict[str, Any] | None:
        """``tertile_edges``, ``class_counts``, ``mean_distribution`` of the label source over the training set.

        ``None``: no train split. Read from the card's ``label_sources``; a card written before it (or its
        ``mean_distribution``) existed costs one scan of the train split's sample JSON (logged), as will a
        training set that is not a whole split.
        """
        if self._label_stats is None and self.split_assignment is not None:
            self._label_stats = self.assigned()["stats"]
        if self._label_stats is None:
            stats = self.card.get("label_sources", {}).get(self.label_source)
            if stats is None or "mean_distribution" not in stats:
                if not self.card.get("shards", {}).get("train"):
                    return None
                log.info("%s: the card lacks label_sources; scanning the train split's sample JSON once", self.shards)
                meta = iter_shard_meta(self.shards, "train", sources=[self.label_source])
                num_classes = len(self.card["classes"])
                stats = label_source_stats(meta, [self.label_source], num_classes)[self.label_source]
            self._label_stats = stats
        return self._label_stats

    def shard_paths(self, split: str) -> list[str]:
        """Paths of the split's shards in card order."""
        names = self.card.get("shards", {}).get(split)
        if not names:
            known = ", ".join(sorted(self.card.get("shards", {}))) or "none"
            where = storage.join(self.shards, CARD_NAME)
            raise ValueError(f"split {split!r} has no shards in {where} (splits: {known})")
        return [str(storage.join(self.shards, name)) for name in names]

    def num_samples(self, split: str) -> int:
        """Number of samples of ``split`` according to the card."""
        return int(self.card.get("num_samples", {}).get(split, 0))

    def null_samples(self, split: str) -> int:
        """Samples of ``split`` whose label source is null (the card's ``null_labels``): the streams skip them."""
        return int(self.card.get("null_labels", {}).get(self.label_source, {}).get(split, 0))

    def shard_access(self, retry: RetryPolicy, cache_dir: str | None, cache_max_bytes: int) -> ShardAccess:
        """How the streams read these shards: ``retry``, the cache, and the card's checksums (a cached copy's check)."""
        info = self.card.get("shard_info") or {}
        checksums = {str(storage.join(self.shards, n)): e["sha256"] for n, e in info.items() if "sha256" in e}
        return ShardAccess(retry, cache_dir, cache_max_bytes, checksums)

    def damaged_shards(self, split: str) -> list[str]:
        """One message per damaged shard of ``split`` (see :func:`~ser_lightning.data.shards.verify.verify_shards`).

        An assigned set (``split_assignment``) is read from every split's shards: all of them are checked.
        """
        if self.split_assignment is not None and split not in self.card.get("shards", {}):
            return [m for s in self.card["shards"] for m in verify_shards(self.shards, s, self.card)]
        return verify_shards(self.shards, split, self.card)

    # ---------------------------------------------------------------- split assignment
    def assigned(self) -> dict[str, Any]:
        """:func:`~ser_lightning.data.stream.assigned.scan_assignment` of ``split_assignment`` over every shard.

        One scan of the samples' JSON (read once): counts per assigned set, samples left out, bin edges, class
        counts and the train mean of the assigned training samples.
        """
        if self._assigned is None:
            if self.split_assignment is None:
                raise ValueError("no split_assignment given")
            metas = iter_shard_meta(self.shards, sources=[self.label_source])
            num_classes = len(self.card["classes"])
            scan = scan_assignment(metas, read_assignment(self.split_assignment), self.label_source, num_classes)
            if not scan["counts"]["train"]:
                raise ValueError(f"{self.split_assignment}: no sample of {self.shards} is assigned to train")
            log.info("split_assignment %s: %s; %d samples of %s not in it are left out",
                     self.split_assignment, scan["counts"], scan["left_out"], self.shards)  # fmt: skip
            if scan["missing"]:
                log.warning("split_assignment %s: %d assigned ids are in no shard of %s (e.g. %r)",
                            self.split_assignment, scan["missing"], self.shards, scan["missing_example"])  # fmt: skip
            self._assigned = scan
        return self._assigned

    def assigned_keys(self, stage: str) -> frozenset[str]:
        """The sample keys the assignment gives a stage's set (what an assigned stream keeps)."""
        assignment = read_assignment(str(self.split_assignment))
        return frozenset(sample_key(i) for i, s in assignment.items() if s == _assigned_set(stage))

    # ---------------------------------------------------------------- stages
    def split_name(self, stage: str) -> str:
        """The card split a stage streams, or ``assigned <set>`` under ``split_assignment``."""
        if self.split_assignment is not None:
            return f"assigned {_assigned_set(stage)}"
        return "train" if stage == "train" else self.splits[stage]

    def urls(self, stage: str) -> list[str]:
        """Shards a stage reads: its split's, or under ``split_assignment`` every split's (filtered by id)."""
        if self.split_assignment is None:
            return self.shard_paths(self.split_name(stage))
        return [path for split in self.card.get("shards", {}) for path in self.shard_paths(split)]

    def count(self, stage: str, null: bool = False) -> int:
        """Samples a stage streams (its card split or assigned set); ``null``: those whose label source is null."""
        if self.split_assignment is None:
            split = self.split_name(stage)
            return self.null_samples(split) if null else self.num_samples(split)
        return int(self.assigned()["null" if null else "counts"][_assigned_set(stage)])

    def expectation(self, stage: str, allow_partial: bool) -> EvalExpectation:
        """What an evaluation pass (``stage``: ``val``/``test``) must account for (see :class:`EvalExpectation`)."""
        stats = self.label_stats()
        mean = None if stats is None else stats.get("mean_distribution")
        return {
            "split": self.split_name(stage),
            "expected": self.count(stage),
            "allow_partial": bool(allow_partial),
            "train_mean": None if mean is None else [float(p) for p in mean],
        }


def _assigned_set(stage: str) -> str:
    """The assigned set a stage reads: ``predict`` streams the assigned test set."""
    return "test" if stage == "predict" else stage
