"""The DiME-Aug streaming stage: :class:`DimeMixer` interleaves synthetic samples with the training stream.

It reads the neighbour index and the minority-class audio pool that ``ser-index``
(:mod:`ser_lightning.data.dime.index`) writes into ``<shards>/dime/``, and mixes with the pure functions
of :mod:`ser_lightning.data.dime.maths` (Scaling Ambiguity, Sec. 2.3, Eq. 1-2).
"""

from __future__ import annotations

import io
import json
import math
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np

from ser_lightning.data.dime.index import INDEX_FILE, INDEX_VERSION, POOL_AUDIO_FILE, POOL_OFFSETS_FILE
from ser_lightning.data.dime.maths import choose_neighbour, dime_amounts, dime_mix
from ser_lightning.data.shards import storage
from ser_lightning.data.stream.pipeline import rank_world, worker_slot
from ser_lightning.labels import entropy

_INT16_SCALE = 32768.0


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

    The epoch comes from :meth:`set_epoch`, called before each pass (the training stream does; its
    non-persistent workers get a fresh copy of the mixer every pass); until it is called, the mixer counts
    its own calls instead (exact with ``num_workers=0``).

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
        self.index_dir = storage.as_location(index_dir)  # local, or under the shards' remote prefix
        index_path = storage.join(self.index_dir, INDEX_FILE)
        if not storage.exists(index_path):
            raise FileNotFoundError(f"no DiME index at {index_path}; build it with `ser-index SHARDS`")
        index = json.loads(storage.read_text(index_path))
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
        self._epoch = -1
        self._calls = 0
        self._distributed: tuple[int, int] | None = None
        self._audio: np.ndarray | None = None
        self._offsets: np.ndarray | None = None

    # -- bookkeeping -------------------------------------------------------------------------

    @property
    def total(self) -> int:
        """Synthetic samples per epoch over all ranks and workers."""
        return int(self._bounds[-1]) if self._bounds.size else 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose synthetic samples the next pass generates."""
        self._epoch = int(epoch)

    def set_distributed(self, rank: int, world_size: int) -> None:
        """Fix this process's rank and world size (the training stream hands them in before workers start).

        Without it the mixer asks :func:`~ser_lightning.data.stream.pipeline.rank_world`, which a spawned DataLoader
        worker may not see answered.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self._distributed = (rank, world_size)

    def slot_numbers(self, slot: int, num_slots: int) -> range:
        """Global synthetic sample numbers of one ``rank x num_workers + worker`` slot."""
        return range(slot, self.total, num_slots)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_audio"] = state["_offsets"] = None  # re-opened lazily in each process
        return state

    def _pool(self) -> tuple[np.ndarray, np.ndarray]:
        if self._audio is None or self._offsets is None:
            self._audio = _load_array(storage.join(self.index_dir, POOL_AUDIO_FILE), mmap=True)
            self._offsets = _load_array(storage.join(self.index_dir, POOL_OFFSETS_FILE))
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
        epoch = self._epoch if self._epoch >= 0 else self._calls - 1
        _, _, slot, slots = worker_slot(*(self._distributed or rank_world()))
        numbers = self.slot_numbers(slot, slots)
        expected_real = self.real_per_epoch / slots
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


def _load_array(location: storage.Location, mmap: bool = False) -> np.ndarray:
    """A ``.npy`` array: memory-mapped from a local file (``mmap``), read into memory from a remote one."""
    if isinstance(location, Path):
        return np.load(location, mmap_mode="r" if mmap else None)
    return np.load(io.BytesIO(storage.read_bytes(location)))
