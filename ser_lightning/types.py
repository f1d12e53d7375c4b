"""Shared names only: literal aliases and typed records used across the package (imports nothing of ours)."""

from __future__ import annotations

from typing import Literal, TypedDict

Split = Literal["train", "val", "test", "test1", "test2", "test3"]
BinningMethod = Literal["quantile", "width"]


class SampleMeta(TypedDict, total=False):
    """The JSON stored beside each audio clip in a shard (one utterance)."""

    id: str
    corpus: str
    split: str
    transcript: str
    speaker: str
    duration: float
    classes: list[str]
    votes: dict[str, list[float]]
    distribution: dict[str, list[float]]
    entropy: dict[str, float]
    vad: list[float] | None
    vad_scale: list[float] | None
