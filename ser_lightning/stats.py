"""Summary statistics of a vote table: the keys `ser-stats` prints and shard cards store."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ser_lightning.labels import (
    entropy,
    fleiss_kappa,
    normalized_entropy,
    plurality,
    quantile_edges,
    votes_to_distribution,
)

STATS_KEYS = (
    "items",
    "raters_min",
    "raters_median",
    "raters_max",
    "vote_totals",
    "entropy_mean",
    "entropy_mean_normalised",
    "fleiss_kappa",
    "tertile_edges",
    "ties",
)


def _finite_or_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def vote_statistics(counts: np.ndarray | Sequence[Sequence[float]], classes: Sequence[str]) -> dict[str, Any]:
    """Statistics of an items x classes vote-count matrix, JSON-ready.

    Every item needs at least one vote (an item without votes has no distribution): callers reject such
    items first, and a ``ValueError`` says so otherwise.
    """
    n = np.asarray(counts, dtype=np.float64).reshape(-1, len(classes))
    raters = n.sum(axis=1)
    if n.shape[0] == 0:
        return {
            "items": 0,
            "raters_min": None,
            "raters_median": None,
            "raters_max": None,
            "vote_totals": {c: 0.0 for c in classes},
            "entropy_mean": None,
            "entropy_mean_normalised": None,
            "fleiss_kappa": None,
            "tertile_edges": None,
            "ties": 0,
        }
    h = entropy(votes_to_distribution(n))
    _, ties = plurality(n)

    def num(x: float) -> float | int:
        return int(x) if float(x).is_integer() else float(x)

    return {
        "items": int(n.shape[0]),
        "raters_min": num(raters.min()),
        "raters_median": num(np.median(raters)),
        "raters_max": num(raters.max()),
        "vote_totals": {c: num(t) for c, t in zip(classes, n.sum(axis=0), strict=True)},
        "entropy_mean": float(h.mean()),
        "entropy_mean_normalised": float(normalized_entropy(h.mean(), len(classes))),
        "fleiss_kappa": _finite_or_none(fleiss_kappa(n).kappa),
        "tertile_edges": [float(e) for e in quantile_edges(h, 3)],
        "ties": ties,
    }
