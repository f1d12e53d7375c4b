"""Every metric overall and per ambiguity bin (stored entropy of the *target* distribution), with means and medians.

Two binnings side by side: ``bin*`` on entropy edges in nats (the training card's tertiles, an entropy on an edge in
the lower bin, ``(lo, hi]``) and ``wbin*``, the paper's width bins on the normalised entropy H / log C with edges
0, 1/3, 2/3, 1 and ``[lo, hi)`` intervals, the last one closed at 1.

Per-utterance scores are kept as ``cat`` states and gathered across ranks, so means, medians and
per-bin classification scores are exact under DDP (uneven samples per rank included).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ser_lightning.labels import normalized_entropy
from ser_lightning.metrics.functional.classification import classification_scores, confusion_matrix, f1_per_class
from ser_lightning.metrics.functional.distribution import DISTRIBUTION_METRICS
from ser_lightning.metrics.functional.probability import dominant_class

WIDTH_EDGES = (1 / 3, 2 / 3)  # the paper's equal-width bins of H / log C: [0, 1/3), [1/3, 2/3), [2/3, 1]
EDGE_ATOL = 1e-9  # a normalised entropy this close to a width edge is on it (log C rounding, e.g. 2 of 8 tied)
_LABEL_STATES = ("bins", "wbins", "pred_labels", "target_labels")
_JS_COLUMN = list(DISTRIBUTION_METRICS).index("js")


def tertile_bins(entropy: Tensor, edges: Sequence[float] | Tensor) -> Tensor:
    """0-based bin of each entropy (nats) between the sorted inner ``edges``: ``(lo, hi]``, an edge in the lower bin."""
    bounds = torch.as_tensor(edges, dtype=torch.float64, device=entropy.device)
    # right=False: the first edge >= the value, so a value equal to an edge goes to the lower bin
    return torch.bucketize(entropy.to(torch.float64), bounds, right=False).long()


def width_bins(entropy: Tensor, num_classes: int, edges: Sequence[float] = WIDTH_EDGES) -> Tensor:
    """0-based width bin of each entropy (nats) normalised by log C: ``[lo, hi)`` bins, the last closed at 1."""
    normalised = normalized_entropy(entropy.double(), num_classes)
    bounds = torch.as_tensor(list(edges), dtype=torch.float64, device=entropy.device) - EDGE_ATOL
    # right=True: boundaries[i-1] <= h < boundaries[i], so an entropy on an edge opens the upper bin
    return torch.bucketize(normalised, bounds, right=True).long()


class AmbiguityBinnedMetrics(Metric):
    """JS, BC, R², KL (mean and median), JSD in nats and acc / F1 / W-F1 / UAR, overall and per entropy bin.

    Keys of :meth:`compute`: ``js`` (bits), ``js_median``, ..., ``jsd_nats`` (the mean JS in nats, paper 004's
    unit), ``acc``, ``f1``, ``wf1``, ``uar``, ``count``, ``nonfinite``
    overall and the same under ``bin1/``, ``bin2/``, ... (bin 1 = least ambiguous) and, with ``width_edges``, under
    ``wbin1/``, ``wbin2/``, ...; with ``classes`` also ``f1/<class>``, the overall F1 of each class. ``nonfinite``
    counts the rows whose prediction or target holds a NaN or an infinity: they make every score of their group NaN
    (the distribution means through their NaN per-utterance scores, the classification scores explicitly) instead
    of an argmax-of-NaN class 0, and they stay out of the confusion matrix. Samples are binned on the target entropy
    stored with them (float64 nats from the votes, the numbers the card's edges were computed from), so an
    entropy equal to an edge is exactly equal and belongs to the lower bin. Width bins normalise that entropy by
    log C (C = ``num_classes``) and put a value on an edge (within ``EDGE_ATOL``) in the upper bin. Empty bins report
    ``count`` 0 and NaN scores.

    Args:
        num_classes: size of the class set.
        bin_edges: the K-1 sorted inner entropy edges in nats (e.g. training-set tertiles); empty for no bins.
        classes: class names, in class order, for the per-class F1 keys ``f1/<name>``; None for none.
        width_edges: sorted inner edges in (0, 1) of the normalised-entropy width bins (``WIDTH_EDGES`` for the
            paper's); empty for none.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(
        self,
        num_classes: int,
        bin_edges: Sequence[float] = (),
        classes: Sequence[str] | None = None,
        width_edges: Sequence[float] = (),
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        edges = torch.as_tensor(list(bin_edges), dtype=torch.float64)
        if edges.numel() > 1 and torch.any(edges[1:] < edges[:-1]):
            raise ValueError(f"bin_edges must be sorted ascending, got {list(bin_edges)}")
        widths = [float(e) for e in width_edges]
        if widths != sorted(widths) or any(not 0 < e < 1 for e in widths):
            raise ValueError(f"width_edges must be sorted and inside (0, 1), got {widths}")
        if classes is not None and (len(classes) != num_classes or len(set(classes)) != num_classes):
            raise ValueError(f"classes must be {num_classes} distinct names, got {list(classes)}")
        self.num_classes = num_classes
        self.classes = list(classes) if classes is not None else None
        self.width_edges = widths
        self.register_buffer("bin_edges", edges, persistent=False)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        for name in _LABEL_STATES:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.last_confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)

    @property
    def num_bins(self) -> int:
        """Number of ambiguity bins K."""
        return self.bin_edges.numel() + 1

    def update(self, preds: Tensor, target: Tensor, entropy: Tensor) -> None:
        """Add predicted and target distributions, both ``(N, C)``, and the targets' stored entropy ``(N,)`` in nats."""
        preds, target, entropy = preds.detach(), target.detach(), entropy.detach()
        if entropy.shape != target.shape[:1]:
            raise ValueError(f"entropy must be ({target.shape[0]},) to match target, got {tuple(entropy.shape)}")
        self.scores.append(torch.stack([fn(preds, target) for fn in DISTRIBUTION_METRICS.values()], dim=-1).double())
        self.bins.append(tertile_bins(entropy.to(target.device), self.bin_edges))
        self.wbins.append(width_bins(entropy.to(target.device), self.num_classes, self.width_edges))
        # a non-finite row has no dominant class: its labels are stored as -1 and counted by compute()
        finite = torch.isfinite(preds).all(-1) & torch.isfinite(target).all(-1)
        missing = torch.full_like(finite, -1, dtype=torch.long)
        self.pred_labels.append(torch.where(finite, dominant_class(preds).long(), missing))
        self.target_labels.append(torch.where(finite, dominant_class(target).long(), missing))

    def _sync_dist(self, dist_sync_fn: Callable[..., Any], process_group: Any | None = None) -> None:
        # a rank that saw no sample must still send tensors of the right shape and dtype to the gather
        if isinstance(self.scores, list) and not self.scores:
            self.scores.append(torch.zeros(0, len(DISTRIBUTION_METRICS), dtype=torch.float64, device=self.device))
            for name in _LABEL_STATES:
                getattr(self, name).append(torch.zeros(0, dtype=torch.long, device=self.device))
        super()._sync_dist(dist_sync_fn, process_group)

    def _summarise(self, scores: Tensor, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {"count": torch.tensor(float(scores.shape[0]))}
        empty = scores.shape[0] == 0
        for i, name in enumerate(DISTRIBUTION_METRICS):
            col = scores[:, i]
            out[name] = torch.tensor(float("nan")) if empty else col.mean().float()
            out[f"{name}_median"] = torch.tensor(float("nan")) if empty else torch.quantile(col, 0.5).float()
        # paper 004 reports JSD in nats (its authors' metric_jsd_per_samp): ln 2 x the mean in bits
        out["jsd_nats"] = torch.tensor(float("nan")) if empty else (scores[:, _JS_COLUMN].mean() * math.log(2)).float()
        finite = (pred >= 0) & (target >= 0)
        out["nonfinite"] = torch.tensor(float((~finite).sum()))
        cls = classification_scores(confusion_matrix(pred[finite], target[finite], self.num_classes))
        nan = torch.tensor(float("nan"))
        out.update({k: (v.float() if bool(finite.all()) else nan) for k, v in cls.items()})
        return out

    def compute(self) -> dict[str, Tensor]:
        """Overall and per-bin results as a flat dict (``js``, ``bin2/bc_median``, ``wbin3/uar``, ``f1/Sad``, ...)."""
        if isinstance(self.scores, list) and not self.scores:
            raise RuntimeError("AmbiguityBinnedMetrics.compute() called before any update()")
        scores = dim_zero_cat(self.scores).double()
        pred = dim_zero_cat(self.pred_labels)
        target = dim_zero_cat(self.target_labels)
        out = self._summarise(scores, pred, target)
        finite = (pred >= 0) & (target >= 0)
        self.last_confusion = confusion_matrix(pred[finite], target[finite], self.num_classes)
        if self.classes is not None:
            per_class = f1_per_class(self.last_confusion).float()
            if not bool(finite.all()):
                per_class = torch.full_like(per_class, float("nan"))
            out.update({f"f1/{name}": per_class[i] for i, name in enumerate(self.classes)})
        groups = [("bin", self.bins, self.num_bins)]
        if self.width_edges:
            groups.append(("wbin", self.wbins, len(self.width_edges) + 1))
        for prefix, state, count in groups:
            bins = dim_zero_cat(state)
            for b in range(count):
                sel = bins == b
                for key, value in self._summarise(scores[sel], pred[sel], target[sel]).items():
                    out[f"{prefix}{b + 1}/{key}"] = value
        return out

    def confusion(self) -> Tensor:
        """Confusion matrix (rows = plurality class, columns = predicted dominant class) of the last ``compute``.

        It is taken from the synchronised state, so under DDP it covers every rank's samples.
        """
        return self.last_confusion
