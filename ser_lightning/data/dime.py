"""DiME-Aug: distribution-aware multimodal emotion augmentation (Scaling Ambiguity, Sec. 2.3).

Minority classes are found from the utterances' dominant emotion; a synthetic sample mixes a
minority-class utterance ``i`` with one of its ``k`` nearest neighbours ``j`` of the same dominant
class: audio and target distribution are interpolated with ``λ ~ U(0, 1)`` (Eq. 1-2), the transcript
is inherited from the dominant source.

The pure functions here are numpy only. :class:`DimeMixer` is the streaming stage used in the
training pipeline; it reads the neighbour index and the minority-class audio pool that
``ser-index`` (:mod:`ser_lightning.data.dime_index`) writes into ``<shards>/dime/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch

from ser_lightning.labels import entropy

log = logging.getLogger(__name__)

T = TypeVar("T")

INDEX_FILE = "index.json"
POOL_AUDIO_FILE = "pool_audio.npy"
POOL_OFFSETS_FILE = "pool_offsets.npy"
INDEX_VERSION = 1
_INT16_SCALE = 32768.0


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


# --------------------------------------------------------------------------------------------
# The streaming stage
# --------------------------------------------------------------------------------------------


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class DimeMixer:
    """Webdataset stage that interleaves DiME-Aug samples with the decoded training stream.

    Every real sample passes through unchanged. Per epoch the mixer generates ``sum(amounts)``
    synthetic samples in total over all ranks and dataloader workers: the global sample numbers
    ``n = 0 .. total-1`` are dealt round-robin to the ``world_size x num_workers`` slots (slot =
    ``rank x num_workers + worker``). Sample ``n`` of an epoch is drawn from a generator seeded with
    ``(seed, epoch, n)``, so it is the same on every rank and for every rank/worker layout, and λ is
    fresh each epoch. Synthetic samples are spread evenly among the slot's expected share of real
    samples (``train_size / slots``); any left when the stream ends are emitted at its end.

    For sample ``n`` of class ``c``: ``i`` is drawn uniformly among the pool utterances of class
    ``c``, ``j`` uniformly among the ``k`` nearest neighbours of ``i`` (same dominant class),
    ``λ ~ U(0, 1)``; both clips are read from the memory-mapped pool (never the whole corpus).

    The epoch comes from :meth:`set_epoch` (kept in shared memory, so persistent dataloader workers
    see it); until it is called, the mixer counts its own calls instead (exact with
    ``num_workers=0`` or persistent workers).

    Args:
        index_dir: the ``dime/`` folder written by ``ser-index`` (``<shards>/dime``).
        amount: ``"deficit"`` (the authors' ``ratio x majority - count`` per class) or a proportion of
            the training set in (0, 1] spread over the minority classes by deficit.
        ratio: minority threshold relative to the majority class.
        k: neighbours to draw from (at most the ``k`` the index was built with).
        seed: base seed.
        label_source: the label source of the targets; must be the one the index was built on
            (default: the index's).
        real_per_epoch: real samples per epoch over all slots, to pace the interleaving (default:
            the index's training-split size).
    """

    def __init__(
        self,
        index_dir: str | os.PathLike[str],
        amount: str | float = "deficit",
        ratio: float = 0.3,
        k: int = 3,
        seed: int = 0,
        label_source: str | None = None,
        real_per_epoch: int | None = None,
    ) -> None:
        self.index_dir = Path(index_dir)
        index_path = self.index_dir / INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(f"no DiME index at {index_path}; build it with `ser-index SHARDS`")
        index = json.loads(index_path.read_text())
        if index.get("version") != INDEX_VERSION:
            raise ValueError(f"{index_path}: index version {index.get('version')}, expected {INDEX_VERSION}")
        if label_source is not None and label_source != index["label_source"]:
            raise ValueError(
                f"the DiME index was built on label source {index['label_source']!r}, not {label_source!r}; "
                f"rebuild it with `ser-index SHARDS --label-source {label_source}`"
            )
        if k < 1 or k > index["k"]:
            raise ValueError(f"k must be in [1, {index['k']}] (the index holds {index['k']} neighbours)")
        self.classes: list[str] = list(index["classes"])
        self.label_source: str = index["label_source"]
        self.ratio, self.k, self.seed = ratio, k, seed
        self.sample_rate: int = int(index["sample_rate"])
        self.train_size: int = int(index["train_size"])
        self.real_per_epoch = self.train_size if real_per_epoch is None else int(real_per_epoch)

        if amount == "deficit":
            amounts = dime_amounts(index["counts"], ratio=ratio)
        elif isinstance(amount, str):
            raise ValueError(f"amount must be 'deficit' or a proportion in (0, 1], got {amount!r}")
        else:
            amounts = dime_amounts(index["counts"], ratio=ratio, proportion=float(amount), train_size=self.train_size)
        amounts = cast(dict[str, int], amounts)

        pool = index["pool"]
        ids: list[str] = pool["ids"]
        self._meta: list[dict[str, Any]] = pool["meta"]
        position = {uid: p for p, uid in enumerate(ids)}
        self._neighbours: list[list[int]] = [[position[u] for u in index["neighbours"][uid][:k]] for uid in ids]
        self._targets = np.asarray([m["distribution"][self.label_source] for m in self._meta], dtype=np.float64)
        members: dict[str, list[int]] = {c: [] for c in self.classes}
        for p, cls in enumerate(pool["classes"]):
            members[cls].append(p)
        self._members: dict[str, np.ndarray] = {}
        for cls, a in amounts.items():
            if a == 0:
                continue
            usable = [p for p in members[cls] if self._neighbours[p]]
            if not usable:
                raise ValueError(
                    f"class {cls!r} needs {a} DiME samples but the pool has no utterance of it with neighbours; "
                    f"rebuild the index with `--ratio {ratio}`"
                )
            self._members[cls] = np.asarray(usable, dtype=np.int64)
        self.amounts: dict[str, int] = {c: int(a) for c, a in amounts.items()}
        self._bounds = np.cumsum([self.amounts[c] for c in self.classes])
        self._epoch = torch.full((), -1, dtype=torch.int64).share_memory_()
        self._calls = 0
        self._audio: np.ndarray | None = None
        self._offsets: np.ndarray | None = None

    # -- bookkeeping -------------------------------------------------------------------------

    @property
    def total(self) -> int:
        """Synthetic samples per epoch over all ranks and workers."""
        return int(self._bounds[-1]) if self._bounds.size else 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose synthetic samples the next pass generates (seen by persistent workers too)."""
        self._epoch.fill_(int(epoch))

    def slot_numbers(self, slot: int, num_slots: int) -> range:
        """Global synthetic sample numbers of one ``rank x num_workers + worker`` slot."""
        return range(slot, self.total, num_slots)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_audio"] = state["_offsets"] = None  # re-opened lazily in each process
        return state

    def _pool(self) -> tuple[np.ndarray, np.ndarray]:
        if self._audio is None or self._offsets is None:
            self._audio = np.load(self.index_dir / POOL_AUDIO_FILE, mmap_mode="r")
            self._offsets = np.load(self.index_dir / POOL_OFFSETS_FILE)
        return self._audio, self._offsets

    def _clip(self, p: int) -> np.ndarray:
        audio, offsets = self._pool()
        return np.asarray(audio[offsets[p] : offsets[p + 1]], dtype=np.float32) / _INT16_SCALE

    # -- generation --------------------------------------------------------------------------

    def synthetic(self, epoch: int, n: int) -> dict[str, Any]:
        """Synthetic sample number ``n`` of ``epoch`` as a decoded sample dict (deterministic)."""
        if not 0 <= n < self.total:
            raise IndexError(f"synthetic sample {n} out of range [0, {self.total})")
        cls = self.classes[int(np.searchsorted(self._bounds, n, side="right"))]
        rng = np.random.default_rng([self.seed, epoch, n])
        members = self._members[cls]
        i = int(members[rng.integers(members.size)])
        j = choose_neighbour(self._neighbours[i], rng)
        lam = float(rng.random())  # λ ~ U(0, 1)
        meta_i, meta_j = self._meta[i], self._meta[j]
        x_k, p_k, transcript = dime_mix(
            self._clip(i),
            self._clip(j),
            self._targets[i],
            self._targets[j],
            lam,
            meta_i.get("transcript", ""),
            meta_j.get("transcript", ""),
        )
        uid = f"dime-{epoch}-{n}"
        return {
            "id": uid,
            "audio": x_k,
            "sample_rate": self.sample_rate,
            "meta": self._synthetic_meta(uid, meta_i, meta_j, lam, p_k, transcript, x_k.shape[0]),
            "target": p_k,
        }

    def _synthetic_meta(
        self,
        uid: str,
        meta_i: dict[str, Any],
        meta_j: dict[str, Any],
        lam: float,
        p_k: np.ndarray,
        transcript: str,
        length: int,
    ) -> dict[str, Any]:
        dominant = meta_i if lam >= 0.5 else meta_j
        vad = None
        if meta_i.get("vad") is not None and meta_j.get("vad") is not None:
            vad = (lam * np.asarray(meta_i["vad"], float) + (1 - lam) * np.asarray(meta_j["vad"], float)).tolist()
        return {
            **dominant,
            "id": uid,
            "split": "train",
            "transcript": transcript,
            "duration": length / self.sample_rate,
            "votes": {},
            "distribution": {self.label_source: p_k.tolist()},
            "entropy": {self.label_source: float(entropy(p_k))},
            "vad": vad,
            "dime": {"i": meta_i["id"], "j": meta_j["id"], "lambda": lam},
        }

    def __call__(self, src: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Pass every sample of ``src`` through and interleave this rank/worker's synthetic samples."""
        self._calls += 1
        epoch = int(self._epoch.item())
        if epoch < 0:
            epoch = self._calls - 1
        rank, world = _rank_world()
        worker, num_workers = _worker()
        numbers = self.slot_numbers(rank * num_workers + worker, world * num_workers)
        expected_real = self.real_per_epoch / (world * num_workers)
        # Synthetic m of M goes after real sample ceil((m + 1) R / (M + 1)): evenly spread over the expected R.
        queue = deque((math.ceil((m + 1) * expected_real / (len(numbers) + 1)), n) for m, n in enumerate(numbers))
        seen = 0
        while queue and queue[0][0] <= seen:
            yield self.synthetic(epoch, queue.popleft()[1])
        for sample in src:
            yield sample
            seen += 1
            while queue and queue[0][0] <= seen:
                yield self.synthetic(epoch, queue.popleft()[1])
        for _, n in queue:  # the stream was shorter than expected
            yield self.synthetic(epoch, n)
