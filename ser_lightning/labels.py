"""Rater votes -> distributions, entropy, ambiguity bins, Fleiss' kappa and plurality labels.

Pure functions over numpy arrays (torch tensors are accepted where noted); no I/O. The last axis of
every vote or distribution array is the class axis, aligned with a :class:`ClassSet`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# --------------------------------------------------------------------------------------------
# Class sets: facts of each corpus. Which one a run uses is configuration.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassSet:
    """An ordered set of emotion classes and the corpus strings that name each class.

    Args:
        name: registry key, e.g. ``"iemocap4"``.
        classes: class names in their canonical order (ties break toward earlier classes).
        aliases: corpus label string -> class name; matching is case-insensitive and ignores
            surrounding whitespace. Every class name is its own alias.
    """

    name: str
    classes: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = {v for v in self.aliases.values() if v not in self.classes}
        if unknown:
            raise ValueError(f"class set {self.name!r}: aliases point to unknown classes {sorted(unknown)}")

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return len(self.classes)

    def _lookup(self) -> dict[str, int]:
        table = {c.casefold(): i for i, c in enumerate(self.classes)}
        for alias, cls in self.aliases.items():
            table[alias.strip().casefold()] = self.classes.index(cls)
        return table

    def index(self, label: str) -> int | None:
        """Class index of a corpus label string, or ``None`` when the label is not in this set."""
        return self._lookup().get(label.strip().casefold())

    def map_labels(self, labels: Iterable[str]) -> tuple[list[int], Counter[str]]:
        """Map label strings to class indices; unknown labels are returned counted, never guessed."""
        table = self._lookup()
        indices: list[int] = []
        unknown: Counter[str] = Counter()
        for label in labels:
            i = table.get(label.strip().casefold())
            if i is None:
                unknown[label.strip()] += 1
            else:
                indices.append(i)
        return indices, unknown

    def count_votes(self, labels: Iterable[str | Sequence[str]]) -> tuple[np.ndarray, Counter[str]]:
        """Vote counts from one entry per rater; a rater giving several tags splits one vote equally.

        A tag outside the class set keeps its share of the rater's vote out of the counts and is
        reported in the returned counter.
        """
        table = self._lookup()
        counts = np.zeros(self.num_classes, dtype=np.float64)
        unknown: Counter[str] = Counter()
        for entry in labels:
            tags = [entry] if isinstance(entry, str) else list(entry)
            if not tags:
                continue
            share = 1.0 / len(tags)
            for tag in tags:
                i = table.get(tag.strip().casefold())
                if i is None:
                    unknown[tag.strip()] += 1
                else:
                    counts[i] += share
        return counts, unknown


_IEMOCAP4 = ClassSet(
    "iemocap4",
    ("Anger", "Happiness", "Neutral", "Sadness"),
    {"Neutral state": "Neutral", "ang": "Anger", "hap": "Happiness", "neu": "Neutral", "sad": "Sadness"},
)
_MSP_ALIASES = {
    "A": "Angry",
    "S": "Sad",
    "H": "Happy",
    "U": "Surprise",
    "F": "Fear",
    "D": "Disgust",
    "C": "Contempt",
    "N": "Neutral",
    "Anger": "Angry",
    "Sadness": "Sad",
    "Happiness": "Happy",
    "Surprised": "Surprise",
    "Disgusted": "Disgust",
}
_MSP8 = ClassSet("msp8", ("Angry", "Sad", "Happy", "Surprise", "Fear", "Disgust", "Contempt", "Neutral"), _MSP_ALIASES)
_MSP9 = ClassSet("msp9", (*_MSP8.classes, "Other"), {**_MSP_ALIASES, "O": "Other"})
_CREMAD6 = ClassSet(
    "cremad6",
    ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad"),
    {
        "A": "Anger",
        "D": "Disgust",
        "F": "Fear",
        "H": "Happy",
        "N": "Neutral",
        "S": "Sad",
        "ANG": "Anger",
        "DIS": "Disgust",
        "FEA": "Fear",
        "HAP": "Happy",
        "NEU": "Neutral",
        "SAD": "Sad",
    },
)

CLASS_SETS: dict[str, ClassSet] = {cs.name: cs for cs in (_IEMOCAP4, _MSP8, _MSP9, _CREMAD6)}


def get_class_set(name_or_classes: str | Sequence[str]) -> ClassSet:
    """A registered class set by name, or an ad-hoc one from a list of class names."""
    if isinstance(name_or_classes, str):
        if name_or_classes in CLASS_SETS:
            return CLASS_SETS[name_or_classes]
        if "," not in name_or_classes:
            raise KeyError(f"unknown class set {name_or_classes!r}; known: {', '.join(sorted(CLASS_SETS))}")
        name_or_classes = [c.strip() for c in name_or_classes.split(",") if c.strip()]
    classes = tuple(name_or_classes)
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise ValueError(f"a class set needs at least 2 distinct classes, got {classes}")
    return ClassSet("custom", classes)


# --------------------------------------------------------------------------------------------
# Votes -> distributions
# --------------------------------------------------------------------------------------------


def votes_to_distribution(counts: np.ndarray | Sequence[float]) -> np.ndarray:
    """Normalise vote counts to a distribution, ``y_c = n_c / N`` (AmbER² Eq. 1); fractional votes allowed.

    Rows with no votes raise: a distribution over nothing is undefined.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if np.any(counts < 0):
        raise ValueError("vote counts must be non-negative")
    total = counts.sum(axis=-1, keepdims=True)
    if np.any(total <= 0):
        raise ValueError("every item needs at least one vote to form a distribution")
    return counts / total


MERGED_RULE = "authors-weighted"  # the card's label_sources.merged.rule.name (see merged_rule)


def merged_rule(primary_weight: float = 0.95, secondary_weight: float = 0.05) -> dict[str, object]:
    """The card record of the ``merged`` rule: ``{"name": MERGED_RULE, "primary_weight", "secondary_weight"}``."""
    if not (primary_weight >= 0 and secondary_weight >= 0 and primary_weight + secondary_weight > 0):
        raise ValueError(f"merged weights must be >= 0 and not both 0, got {primary_weight}, {secondary_weight}")
    return {"name": MERGED_RULE, "primary_weight": float(primary_weight), "secondary_weight": float(secondary_weight)}


def weighted_merge(
    primary: np.ndarray | Sequence[float],
    secondary: np.ndarray | Sequence[float],
    primary_weight: float = 0.95,
    secondary_weight: float = 0.05,
) -> np.ndarray:
    """``normalise(w_p P + w_s S)``: P, S the normalised primary and secondary counts; P where S is empty.

    Follows the entropy-curriculum authors (Omidi et al., ``prepare_msp_podcast.py``: ``parse_labels_txt``
    builds P and S, ``_merge_dist`` weights and renormalises). Rows without primary votes raise.
    """
    merged_rule(primary_weight, secondary_weight)  # checks the weights
    p = votes_to_distribution(primary)
    s = np.asarray(secondary, dtype=np.float64)
    if np.any(s < 0):
        raise ValueError("secondary counts must be non-negative")
    s_total = s.sum(axis=-1, keepdims=True)
    s = np.divide(s, s_total, out=np.zeros_like(s), where=s_total > 0)
    out = primary_weight * p + secondary_weight * s
    total = out.sum(axis=-1, keepdims=True)
    return np.where(total > 0, out / np.where(total > 0, total, 1.0), p)  # w_p = 0 and no S: P


# --------------------------------------------------------------------------------------------
# Entropy and ambiguity bins
# --------------------------------------------------------------------------------------------


def entropy(p: np.ndarray | Sequence[float], normalise: bool = False) -> np.ndarray:
    """Shannon entropy in nats over the last axis (0 log 0 = 0); divided by log C when ``normalise``."""
    p = np.asarray(p, dtype=np.float64)
    p = p / p.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    h = terms.sum(axis=-1)
    return normalized_entropy(h, p.shape[-1]) if normalise else h


def normalized_entropy(entropy: Any, num_classes: int) -> Any:
    """H / log C clamped to [0, 1] (NaN stays NaN), for numpy arrays, floats and torch tensors alike.

    The one normalisation of an entropy in nats over C classes: the curriculum's H_norm, paper 004's width bins,
    and the statistics' normalised means all use it.
    """
    scaled = entropy / math.log(num_classes)
    return scaled.clamp(0.0, 1.0) if hasattr(scaled, "clamp") else np.clip(scaled, 0.0, 1.0)


def quantile_edges(reference_entropy: np.ndarray | Sequence[float], num_bins: int = 3) -> np.ndarray:
    """The ``num_bins - 1`` inner edges of equal-count bins on a reference set (tertiles by default).

    Compute them on the training split and reuse them on val/test, as the Scaling Ambiguity paper does.
    """
    if num_bins < 1:
        raise ValueError("num_bins must be >= 1")
    values = np.asarray(reference_entropy, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("quantile edges need a non-empty reference set")
    return np.quantile(values, np.arange(1, num_bins) / num_bins)



# --------------------------------------------------------------------------------------------
# Agreement and plurality
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FleissKappa:
    """Fleiss' kappa with the items it was computed on.

    Attributes:
        kappa: (P̄ - P̄e) / (1 - P̄e); NaN when chance agreement is 1.
        observed: mean per-item agreement P̄.
        expected: chance agreement P̄e from pooled class proportions.
        items: items used (>= 2 raters).
        excluded: items left out for having fewer than 2 raters.
    """

    kappa: float
    observed: float
    expected: float
    items: int
    excluded: int


def fleiss_kappa(counts: np.ndarray | Sequence[Sequence[float]]) -> FleissKappa:
    """Fleiss' kappa for items rated by different numbers of raters (fractional counts allowed).

    P_i = (Σ_j n_ij² - n_i) / (n_i (n_i - 1)), averaged over items with n_i >= 2;
    p_j = Σ_i n_ij / Σ_i n_i over the same items; P̄e = Σ_j p_j².
    """
    n = np.asarray(counts, dtype=np.float64)
    if n.ndim != 2:
        raise ValueError("fleiss_kappa expects an items x classes count matrix")
    raters = n.sum(axis=1)
    keep = raters >= 2
    n, raters = n[keep], raters[keep]
    excluded = int((~keep).sum())
    if n.shape[0] == 0:
        return FleissKappa(float("nan"), float("nan"), float("nan"), 0, excluded)
    p_i = ((n**2).sum(axis=1) - raters) / (raters * (raters - 1))
    observed = float(p_i.mean())
    p_j = n.sum(axis=0) / raters.sum()
    expected = float((p_j**2).sum())
    kappa = (observed - expected) / (1 - expected) if expected < 1 else float("nan")
    return FleissKappa(float(kappa), observed, expected, int(n.shape[0]), excluded)


def plurality(counts: np.ndarray | Sequence[Sequence[float]], atol: float = 1e-9) -> tuple[np.ndarray, int]:
    """Plurality class index per item, ties broken toward the class listed first; also the number of tied items.

    The torch twin for model outputs is :func:`ser_lightning.metrics.functional.probability.dominant_class`.
    """
    n = np.asarray(counts, dtype=np.float64)
    top = n.max(axis=-1, keepdims=True)
    is_max = n >= top - atol
    labels = is_max.argmax(axis=-1)
    ties = int((is_max.sum(axis=-1) > 1).sum())
    return labels, ties
