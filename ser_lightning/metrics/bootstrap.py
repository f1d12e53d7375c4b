"""Bootstrap confidence intervals of the test metrics of one run: utterances resampled with replacement.

The entropy-aware WavLM paper (004, Sec. 4) reports 95% bootstrap confidence intervals on Test1 and Test2; here
they are *percentile* intervals: the (1 - level) / 2 and (1 + level) / 2 quantiles (linear interpolation, numpy's
default) of the metric over ``num_samples`` resamples of the scored utterances, each resample as large as the set.

Vectorised: the resamples are seeded index matrices ``(chunk, N)`` drawn chunk by chunk from one
``torch.Generator``; each chunk becomes a count matrix (how often each utterance was drawn), and one matrix
product with per-utterance features gives every resample's sums at once: the per-utterance scores of
:mod:`~ser_lightning.metrics.functional.distribution` (JS, BC, R², KL: their means) and the one-hot dominant-class
labels (support, predictions and hits per class: accuracy, macro- and weighted-F1, UAR exactly as
:func:`~ser_lightning.metrics.functional.classification.classification_scores`). 10,000 utterances x 10,000
resamples take seconds on a CPU. A set holding a non-finite prediction or target scores NaN (as the metrics do),
so its intervals are NaN. Per ambiguity bin (:func:`ambiguity_groups`, the bins of
:class:`~ser_lightning.metrics.AmbiguityBinnedMetrics`) the bin's utterances are resampled, its size fixed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from ser_lightning.metrics.binned import WIDTH_EDGES, tertile_bins, width_bins
from ser_lightning.metrics.functional.distribution import DISTRIBUTION_METRICS
from ser_lightning.metrics.functional.probability import dominant_class

CI_METRICS = (*DISTRIBUTION_METRICS, "acc", "f1", "wf1", "uar")  # the metrics given an interval
CHUNK_ELEMENTS = 1 << 22  # indices per chunk (chunk x N): 32 MiB of int64


def chunk_rows(n: int, num_samples: int) -> int:
    """Resamples per chunk for ``n`` utterances: about :data:`CHUNK_ELEMENTS` indices, at least one row."""
    return max(1, min(num_samples, CHUNK_ELEMENTS // max(n, 1)))


def resample_indices(n: int, num_samples: int, seed: int = 0) -> Iterator[Tensor]:
    """Seeded ``(chunk, n)`` int64 index matrices, ``num_samples`` rows in all; each row is one resample."""
    if n < 1 or num_samples < 1:
        raise ValueError(f"need at least one utterance and one resample, got n={n}, num_samples={num_samples}")
    generator = torch.Generator().manual_seed(seed)
    rows = chunk_rows(n, num_samples)
    for start in range(0, num_samples, rows):
        yield torch.randint(0, n, (min(rows, num_samples - start), n), generator=generator)


def _features(preds: Tensor, target: Tensor) -> tuple[Tensor, int]:
    """Per-utterance columns ``[js, bc, r2, kl, correct, onehot(target), onehot(pred), onehot(target) * correct]``."""
    num_classes = target.shape[1]
    scores = torch.stack([fn(preds, target) for fn in DISTRIBUTION_METRICS.values()], dim=-1)
    true = torch.nn.functional.one_hot(dominant_class(target).long(), num_classes).double()
    pred = torch.nn.functional.one_hot(dominant_class(preds).long(), num_classes).double()
    correct = (true * pred).sum(-1, keepdim=True)
    return torch.cat([scores, correct, true, pred, true * correct], dim=-1), num_classes


def _statistics(sums: Tensor, n: int, num_classes: int) -> dict[str, Tensor]:
    """Every :data:`CI_METRICS` value of each resample from its feature sums ``(R, 5 + 3C)``."""
    k = len(DISTRIBUTION_METRICS)
    out = {name: sums[:, i] / n for i, name in enumerate(DISTRIBUTION_METRICS)}
    support, predicted, hits = sums[:, k + 1 :].split(num_classes, dim=-1)
    denom = support + predicted
    f1 = torch.where(denom > 0, 2 * hits / denom.clamp_min(1e-12), torch.zeros_like(hits))
    present = support > 0
    recall = torch.where(present, hits / support.clamp_min(1e-12), torch.zeros_like(hits))
    out["acc"] = sums[:, k] / n
    out["f1"] = f1.mean(-1)
    out["wf1"] = (f1 * support).sum(-1) / n
    out["uar"] = recall.sum(-1) / present.sum(-1)
    return out


def bootstrap_statistics(preds: Tensor, target: Tensor, num_samples: int = 10_000, seed: int = 0) -> dict[str, Tensor]:
    """Each metric of :data:`CI_METRICS` on every resample: ``{name: (num_samples,) float64}``.

    ``preds`` and ``target`` are ``(N, C)`` distributions (the scored predictions and targets); the resamples are
    those of :func:`resample_indices` with the same ``seed``.
    """
    if preds.shape != target.shape or preds.ndim != 2:
        raise ValueError(f"preds and target must both be (N, C), got {tuple(preds.shape)} and {tuple(target.shape)}")
    n = preds.shape[0]
    finite = bool(torch.isfinite(preds).all() and torch.isfinite(target).all())
    if not finite:
        nan = torch.full((num_samples,), float("nan"), dtype=torch.float64)
        return {name: nan.clone() for name in CI_METRICS}
    features, num_classes = _features(preds.cpu(), target.cpu())
    chunks: list[dict[str, Tensor]] = []
    for idx in resample_indices(n, num_samples, seed):
        ones = torch.ones((), dtype=torch.float64).expand(idx.shape)
        counts = torch.zeros(idx.shape, dtype=torch.float64).scatter_add_(1, idx, ones)  # draws of each utterance
        chunks.append(_statistics(counts @ features, n, num_classes))
    return {name: torch.cat([c[name] for c in chunks]) for name in CI_METRICS}


def percentile_interval(values: Tensor, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval ``(lo, hi)`` of ``values`` at ``level`` (NaN when any value is NaN)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    values = values.double()
    if values.numel() == 0 or bool(torch.isnan(values).any()):
        return math.nan, math.nan
    alpha = (1 - level) / 2
    lo, hi = torch.quantile(values, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return lo, hi


def bootstrap_intervals(
    preds: Tensor, target: Tensor, num_samples: int = 10_000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals ``{metric: (lo, hi)}`` of :data:`CI_METRICS` over resampled utterances."""
    stats = bootstrap_statistics(preds, target, num_samples, seed)
    return {name: percentile_interval(values, level) for name, values in stats.items()}


def ambiguity_groups(
    entropy: Tensor, num_classes: int, bin_edges: Sequence[float], width_edges: Sequence[float] = WIDTH_EDGES
) -> dict[str, Tensor]:
    """Masks ``{"bin1": ..., "wbin1": ...}`` of the utterances in each entropy bin (nats), binned as the metrics do."""
    bins = tertile_bins(entropy, list(bin_edges))
    groups = {f"bin{b + 1}": bins == b for b in range(len(bin_edges) + 1)}
    if width_edges:
        wbins = width_bins(entropy, num_classes, width_edges)
        groups.update({f"wbin{b + 1}": wbins == b for b in range(len(width_edges) + 1)})
    return groups
