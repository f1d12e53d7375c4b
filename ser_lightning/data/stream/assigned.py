"""Streaming an assigned set (``SERDataModule(split_assignment=...)``, ``ser-experiment``'s folds) out of all shards.

A split assignment is a JSON ``{id: "train" | "val" | "test"}``. The DataModule reads the shards of every split
and keeps the samples of one assigned set (:class:`AssignedStreamConfig`); its statistics come from one scan of
the samples' JSON (:func:`scan_assignment`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ser_lightning.data.shards.card import label_source_stats, sample_field
from ser_lightning.data.stream.pipeline import StreamConfig

ASSIGNED = ("train", "val", "test")  # the sets of a split assignment


@dataclasses.dataclass
class AssignedStreamConfig(StreamConfig):
    """A :class:`StreamConfig` that decodes only the samples whose ``__key__`` is in ``keep`` (an assigned set).

    The filter runs on the raw samples, before any audio is decoded; the samples it leaves out are not skips.
    """

    keep: frozenset[str] = frozenset()

    def decode_stage(self, handler: Any) -> Callable[[Iterable[Any]], Iterator[Any]]:
        """Keep the assigned samples, then decode them as :meth:`StreamConfig.decode_stage` does."""
        decode = super().decode_stage(handler)
        keep = self.keep

        def stage(src: Iterable[Any]) -> Iterator[Any]:
            return decode(s for s in src if s.get("__key__") in keep)

        return stage


def read_assignment(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``{id: "train" | "val" | "test"}`` JSON of a split assignment, checked."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"split_assignment {path}: cannot read it as JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"split_assignment {path}: expected a JSON object {{id: train|val|test}}")
    bad = {v for v in data.values() if v not in ASSIGNED}
    if bad:
        raise ValueError(f"split_assignment {path}: values must be one of {ASSIGNED}, got {sorted(map(str, bad))}")
    return {str(k): str(v) for k, v in data.items()}


def scan_assignment(
    metas: Iterable[Mapping[str, Any]], assignment: Mapping[str, str], label_source: str, num_classes: int
) -> dict[str, Any]:
    """One pass over every sample's JSON: what the assignment selects.

    Returns ``counts`` and ``null`` (label source null) per assigned set, ``left_out`` (samples not in the
    assignment), ``missing`` (assigned ids in no sample, with ``missing_example``) and ``stats``: the
    :func:`~ser_lightning.data.shards.card.label_source_stats` of the assigned training samples.
    """
    remaining = dict(assignment)
    counts: Counter[str] = Counter()
    null: Counter[str] = Counter()
    train: list[dict[str, Any]] = []
    left_out = 0
    for meta in metas:
        stage = remaining.pop(str(meta["id"]), None)
        if stage is None:
            left_out += 1
            continue
        counts[stage] += 1
        null[stage] += sample_field(dict(meta), "votes", label_source) is None
        if stage == "train":
            train.append({k: meta[k] for k in ("id", "votes", "entropy")})
    return {
        "counts": {s: counts[s] for s in ASSIGNED},
        "null": {s: null[s] for s in ASSIGNED},
        "left_out": left_out,
        "missing": len(remaining),
        "missing_example": next(iter(remaining), None),
        "stats": label_source_stats(train, [label_source], num_classes)[label_source],
    }
