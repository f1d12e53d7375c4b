"""DiME-Aug: distribution-aware multimodal emotion augmentation (Scaling Ambiguity, Sec. 2.3).

Minority classes are found from the utterances' dominant emotion; a synthetic sample mixes a
minority-class utterance ``i`` with one of its ``k`` nearest neighbours ``j`` of the same dominant
class: audio and target distribution are interpolated with ``λ ~ U(0, 1)`` (Eq. 1-2), the transcript
is inherited from the dominant source.

The functions here are numpy only. ``ser-index`` (:mod:`ser_lightning.data.dime.index`) uses them to
build the neighbour index and minority-class pool; :class:`ser_lightning.data.dime.mixer.DimeMixer`, the
streaming stage of the training pipeline, to mix.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# Minority classes and amounts
# --------------------------------------------------------------------------------------------


def _counts_array(dominant_counts: Mapping[str, int] | Sequence[int] | np.ndarray) -> tuple[list[Any], np.ndarray]:
    if isinstance(dominant_counts, Mapping):
        keys: list[Any] = list(dominant_counts.keys())
        counts = np.asarray([dominant_counts[k] for k in keys], dtype=np.int64)
    else:
        counts = np.asarray(dominant_counts, dtype=np.int64)
        keys = list(range(counts.shape[0]))
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError("dominant_counts must be a non-empty 1-D sequence (one count per class)")
    if np.any(counts < 0):
        raise ValueError("dominant_counts must be non-negative")
    return keys, counts


def _threshold(counts: np.ndarray, ratio: float) -> float:
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    # Rounded to 9 decimals so that e.g. 0.3 x 10 is 3, not 3.0000000000000004.
    return round(ratio * float(counts.max()), 9)


def minority_classes(dominant_counts: Mapping[str, int] | Sequence[int] | np.ndarray, ratio: float = 0.3) -> list[Any]:
    """Classes whose count of dominant-emotion utterances is below ``ratio`` x the majority class count.

    Args:
        dominant_counts: utterances per dominant class, either class name -> count or a sequence
            aligned with the class list.
        ratio: minority threshold relative to the majority (largest) class, in (0, 1].

    Returns:
        The minority classes in input order: class names for a mapping, indices for a sequence.
    """
    keys, counts = _counts_array(dominant_counts)
    threshold = _threshold(counts, ratio)
    return [k for k, n in zip(keys, counts, strict=True) if n < threshold]


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` summing exactly to ``total`` (ties toward earlier entries)."""
    quotas = total * weights / weights.sum()
    base = np.floor(quotas).astype(np.int64)
    left = total - int(base.sum())
    order = sorted(range(len(weights)), key=lambda c: (-(quotas[c] - base[c]), c))
    for c in order[:left]:
        base[c] += 1
    return base


def dime_amounts(
    dominant_counts: Mapping[str, int] | Sequence[int] | np.ndarray,
    ratio: float = 0.3,
    proportion: float | None = None,
    train_size: int | None = None,
) -> dict[str, int] | np.ndarray:
    """Number of DiME-Aug samples to generate per class (per epoch).

    Deficit mode (``proportion=None``): the authors generate ``ratio x majority - count`` samples per
    minority class; here it is ``ceil(ratio x majority) - count`` (ceil, so that no class is a minority
    after augmentation; it differs from the authors' integer truncation by at most one sample).

    Proportion mode: ``round(proportion x train_size)`` samples in total (the paper's grid of 10-50 %),
    spread over the minority classes in proportion to their real-valued deficits
    ``ratio x majority - count``, with largest-remainder rounding so that the total is exact.

    Classes with fewer than two utterances have nothing to mix and get 0 in both modes; when no class
    can be augmented every amount is 0.

    Args:
        dominant_counts: utterances per dominant class (class name -> count, or a sequence).
        ratio: minority threshold relative to the majority class, in (0, 1].
        proportion: fraction of the training set to add, in (0, 1]; ``None`` for deficit mode.
        train_size: number of training utterances; required with ``proportion``.

    Returns:
        Amounts in the input's form: a dict class name -> int for a mapping, else an int64 array.
    """
    keys, counts = _counts_array(dominant_counts)
    threshold = _threshold(counts, ratio)
    mixable = (counts < threshold) & (counts >= 2)
    if proportion is None:
        amounts = np.where(mixable, math.ceil(threshold) - counts, 0).astype(np.int64)
    else:
        if not 0 < proportion <= 1:
            raise ValueError(f"proportion must be in (0, 1], got {proportion}")
        if train_size is None or train_size <= 0:
            raise ValueError("proportion mode needs a positive train_size")
        total = int(math.floor(proportion * train_size + 0.5))
        deficits = np.where(mixable, threshold - counts, 0.0)
        if deficits.sum() <= 0:
            log.warning("DiME-Aug: no minority class with at least two utterances; nothing to generate")
            amounts = np.zeros_like(counts)
        else:
            amounts = _largest_remainder(total, deficits)
    if isinstance(dominant_counts, Mapping):
        return {k: int(a) for k, a in zip(keys, amounts, strict=True)}
    return amounts


# --------------------------------------------------------------------------------------------
# Neighbours and mixing
# --------------------------------------------------------------------------------------------


def standardise(features: np.ndarray) -> np.ndarray:
    """Z-score each feature column; constant columns become 0."""
    x = np.asarray(features, dtype=np.float64)
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)


def nearest_neighbours(
    features: np.ndarray, groups: Sequence[Any] | np.ndarray, k: int = 3, block: int = 1024
) -> list[list[int]]:
    """The ``k`` nearest rows of the same group for every row, by Euclidean distance, excluding itself.

    Features are used as given (standardise them first). Rows of a group with ``n <= k`` members get
    all ``n - 1`` others. Neighbours are sorted by distance, ties toward the lower row index.

    Args:
        features: ``(N, D)`` feature matrix.
        groups: ``N`` group labels (the dominant class).
        k: neighbours per row.
        block: rows per distance block (bounds memory to ``block x group size``).

    Returns:
        For each row, the row indices of its neighbours.
    """
    x = np.asarray(features, dtype=np.float64)
    labels = np.asarray(groups)
    if x.ndim != 2 or x.shape[0] != labels.shape[0]:
        raise ValueError("features must be (N, D) with one group label per row")
    if k < 1:
        raise ValueError("k must be >= 1")
    out: list[list[int]] = [[] for _ in range(x.shape[0])]
    for g in dict.fromkeys(labels.tolist()):
        members = np.flatnonzero(labels == g)
        kk = min(k, members.size - 1)
        if kk < 1:
            continue
        xg = x[members]
        sq = (xg**2).sum(axis=1)
        for start in range(0, members.size, block):
            rows = np.arange(start, min(start + block, members.size))
            d2 = sq[rows, None] + sq[None, :] - 2.0 * xg[rows] @ xg.T
            d2 = np.maximum(d2, 0.0)
            d2[np.arange(rows.size), rows] = np.inf
            for r, row in zip(rows, d2, strict=True):
                # Stable sort on (distance, index): exact and deterministic.
                nearest = np.lexsort((np.arange(row.size), row))[:kk]
                out[members[r]] = members[nearest].tolist()
    return out


def choose_neighbour(neighbours: Sequence[T], rng: np.random.Generator) -> T:
    """One of an utterance's nearest neighbours, drawn uniformly."""
    if len(neighbours) == 0:
        raise ValueError("this utterance has no neighbour to mix with")
    return neighbours[int(rng.integers(len(neighbours)))]


def dime_mix(
    x_i: np.ndarray,
    x_j: np.ndarray,
    p_i: np.ndarray | Sequence[float],
    p_j: np.ndarray | Sequence[float],
    lam: float,
    transcript_i: str,
    transcript_j: str,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Mix two utterances into one DiME-Aug sample.

    Both clips are cropped to the shorter one (from the start) before mixing.

    Args:
        x_i: audio of the minority-class utterance i (1-D).
        x_j: audio of its neighbour j (1-D, same sample rate).
        p_i: target distribution of i.
        p_j: target distribution of j.
        lam: mixing coefficient λ in [0, 1].
        transcript_i: transcript of i.
        transcript_j: transcript of j.

    Returns:
        ``(x_k, p_k, transcript_k)``: float32 audio, float32 distribution and the transcript of the
        dominant source (i when λ >= 0.5, else j).
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    a = np.asarray(x_i, dtype=np.float32)
    b = np.asarray(x_j, dtype=np.float32)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError("audio must be 1-D (mono)")
    n = min(a.shape[0], b.shape[0])
    x_k = (lam * a[:n] + (1.0 - lam) * b[:n]).astype(np.float32)  # Scaling Ambiguity Eq. 1
    pi = np.asarray(p_i, dtype=np.float64)
    pj = np.asarray(p_j, dtype=np.float64)
    if pi.shape != pj.shape:
        raise ValueError(f"distributions differ in shape: {pi.shape} vs {pj.shape}")
    p_k = (lam * pi + (1.0 - lam) * pj).astype(np.float32)  # Scaling Ambiguity Eq. 2
    transcript_k = transcript_i if lam >= 0.5 else transcript_j  # Sec. 2.3: 0.5 threshold on λ
    return x_k, p_k, transcript_k
