"""Decode shard samples, transform them and stream them as batches: the datasets behind ``SERDataModule``.

Train (:class:`TrainStream`): an endless, seeded walk over the shards (every rank and worker starts at
its own place in a shared per-round shard order) -> tar members -> shuffle buffer -> decode -> optional
augmentation (DiME-Aug) -> resample to the model's rate -> random crop -> length-bucketed dynamic
batches -> collate, cut to a fixed number of batches per worker so every rank yields the same count.

Evaluation (:class:`EvalStream`): every shard of the split in card order -> keep sample ``i`` when
``i % (world_size x workers) == rank x workers + worker`` -> decode -> resample -> center crop ->
batches -> collate, so each sample is seen exactly once over all ranks and workers, whatever the
number of shards.

Undecodable samples and unreadable shards are logged and counted by :class:`SkipCounter` (a
webdataset exception handler) and skipped; in evaluation each batch carries, under ``skipped``, the
skips its worker met since its previous batch (and a worker with skips left over after its last batch
yields one batch of no samples that carries them), so the model can account for every sample of the card.
Webdataset does the plumbing (shard lists, tar members,
sample slicing, shuffle buffer, maps with that handler, the epoch cut); kept here is what it lacks, each
with its reason in a comment: :func:`shard_cycle`, :class:`SkipCounter` and (beside) ``dynamic_batches``
and ``EpochDataLoader``.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np
import webdataset as wds
from torch.utils.data import IterableDataset

from ser_lightning.data.shards.storage import ByteCounter
from ser_lightning.data.stream.batching import Collate, dynamic_batches
from ser_lightning.data.stream.sample import Sample, decode_sample, transform_stage
from ser_lightning.data.stream.shard_reader import ShardAccess, tar_samples
from ser_lightning.data.stream.skips import SkipCounter

log = logging.getLogger(__name__)

EVAL_SPLITS = ("auto", "shard", "sample")


class AugmentStage(Protocol):
    """What the training stream and the DataModule ask of an ``augment`` stage (DiME-Aug's ``DimeMixer``).

    Attributes:
        label_source: the label source of the targets it makes; must be the one the DataModule trains on.
    """

    label_source: str

    @property
    def total(self) -> int:
        """Samples it adds per epoch over all ranks and workers (the epoch's batch count includes them)."""
        ...

    def set_epoch(self, epoch: int) -> None:
        """Take the epoch before each pass (the stage is pickled into fresh workers afterwards)."""
        ...

    def set_distributed(self, rank: int, world_size: int) -> None:
        """Take this process's rank and world size (a spawned worker may not see torch.distributed)."""
        ...

    def __call__(self, src: Iterator[Sample]) -> Iterator[Sample]:
        """Pass decoded samples through, adding its own."""
        ...


# --------------------------------------------------------------------------------------------
# Pipeline stages (iterator -> iterator)
# --------------------------------------------------------------------------------------------


def _decode_ok(raw: Sample, label_source: str, num_classes: int | None, handler: SkipCounter) -> Sample:
    """:func:`decode_sample`, telling ``handler`` that a sample decoded (it counts failures in a row)."""
    sample = decode_sample(raw, label_source, num_classes)
    handler.ok()
    return sample


# webdataset's ResampledShards draws shards with replacement; this visits each once per round, slots offset
def shard_cycle(urls: Sequence[str], seed: int, epoch: int, slot: int, slots: int) -> Iterator[dict[str, str]]:
    """Endless shard stream of one (rank, worker) slot: rounds of a seeded shard order, entered at the slot's offset.

    Every round visits each shard once in an order shared by all slots (seeded by ``seed``, ``epoch`` and
    the round); slot ``k`` starts at position ``k x len(urls) // slots``, so with at least as many shards as
    slots the slots read different shards.
    """
    n = len(urls)
    start = slot * n // slots
    for rnd in itertools.count():
        order = stream_rng(seed, epoch, rnd).sample(range(n), n)
        for j in range(n):
            yield {"url": urls[order[(start + j) % n]]}


def drop(src: Iterable[Any], count: int) -> Iterator[Any]:
    """Skip the first ``count`` items of ``src`` (a resumed pass replays what was trained before the restart)."""
    return itertools.islice(src, count, None)


def stream_rng(*keys: int) -> random.Random:
    """A ``random.Random`` seeded from integer keys (seed, epoch, rank, worker, purpose ...)."""
    state = np.random.SeedSequence([k % 2**32 for k in keys]).generate_state(2)
    return random.Random(int(state[0]) << 32 | int(state[1]))


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process: ``RANK``/``WORLD_SIZE``, else torch.distributed, else ``(0, 1)``."""
    rank, world_size, _, _ = wds.utils.pytorch_worker_info()
    return rank, world_size


def worker_slot(rank: int, world_size: int) -> tuple[int, int, int, int]:
    """``(worker, num_workers, slot, slots)`` of the calling DataLoader worker (or the main process) on ``rank``."""
    _, _, worker, num_workers = wds.utils.pytorch_worker_info()
    return worker, num_workers, rank * num_workers + worker, world_size * num_workers


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


@dataclass
class StreamConfig:
    """What every stream does to a decoded sample.

    Attributes:
        label_source: distribution used as the target (``primary``, ``merged`` ...).
        num_classes: length of the target, checked at decoding.
        sample_rate: the model's sample rate; clips are resampled to it.
        crop_seconds: longest clip kept (random crop in train, center crop in eval), or ``None``.
        max_batch_seconds: bound on batch size x longest clip, in seconds.
        max_batch_size: bound on clips per batch.
        bucket_buffer: samples sorted together by length before batching.
        collate: turns a list of samples into the batch dict (default: ``Collate(label_source)``).
        access: how shards are read (retries, local cache); see :mod:`ser_lightning.data.stream.shard_reader`.
        eval_split: how an evaluation divides the split over ranks and workers: ``shard`` (each shard read once
            in all), ``sample`` (every slot reads every shard and keeps its share), or ``auto``: ``shard`` when
            the split has at least as many shards as ranks x workers.

    The defaults are the DataModule's.
    """

    label_source: str = "primary"
    num_classes: int | None = None
    sample_rate: int = 16000
    crop_seconds: float | None = None
    max_batch_seconds: float = 64.0
    max_batch_size: int = 32
    bucket_buffer: int = 256
    collate: Collate | None = None
    access: ShardAccess = field(default_factory=ShardAccess)
    eval_split: str = "auto"

    def __post_init__(self) -> None:
        if self.collate is None:
            self.collate = Collate(self.label_source)
        if self.eval_split not in EVAL_SPLITS:
            raise ValueError(f"eval_split must be one of {EVAL_SPLITS}, got {self.eval_split!r}")

    def tar_stage(self, handler: SkipCounter, counter: ByteCounter | None = None) -> Any:
        """Shard records -> samples, read through :attr:`access` (bytes into ``counter``, skips to ``handler``)."""
        return partial(tar_samples, access=self.access, counter=counter, handler=handler)

    def decode_stage(self, handler: SkipCounter) -> Callable[[Iterable[Sample]], Iterator[Sample]]:
        """:func:`decode_sample` with this config's label source and class count; bad samples go to ``handler``."""
        decode = partial(_decode_ok, label_source=self.label_source, num_classes=self.num_classes, handler=handler)
        return wds.map(decode, handler=handler)

    def transform_stage(self, rng: random.Random | None) -> Callable[[Iterable[Sample]], Iterator[Sample]]:
        """:func:`transform_stage` to this config's rate and crop (random crops with ``rng``, else centered)."""
        return partial(transform_stage, sample_rate=self.sample_rate, crop_seconds=self.crop_seconds, rng=rng)

    def batch_stage(self, rng: random.Random | None) -> Callable[[Iterable[Sample]], Iterator[list[Sample]]]:
        """:func:`~ser_lightning.data.stream.batching.dynamic_batches` with these bounds (shuffled with ``rng``)."""
        return partial(
            dynamic_batches,
            sample_rate=self.sample_rate,
            max_batch_seconds=self.max_batch_seconds,
            max_batch_size=self.max_batch_size,
            bucket_buffer=self.bucket_buffer,
            rng=rng,
        )


class TrainStream(IterableDataset):
    """Endless shuffled training stream cut to exactly ``batches_per_epoch`` collated batches per rank.

    Worker ``w`` of ``W`` yields ``batches_per_epoch // W`` batches, one more when
    ``w < batches_per_epoch % W``, so the DataLoader (``batch_size=None``) of every rank yields the same
    count whatever the shard sizes. The randomness (shard order, shuffle buffer, crops, batch order)
    is seeded by ``(seed, epoch, rank, worker)``: call :meth:`set_epoch` before each pass for a fresh,
    reproducible order.

    Args:
        urls: train shard paths.
        batches_per_epoch: batches this rank yields per pass.
        config: decoding, transform and batching settings.
        rank: this process's rank.
        world_size: number of ranks.
        shuffle_buffer: raw samples in the shuffle buffer (0 turns shuffling off).
        seed: base seed.
        augment: optional stage over decoded samples, run right after decoding (DiME-Aug).
    """

    def __init__(
        self,
        urls: Sequence[str],
        batches_per_epoch: int,
        config: StreamConfig,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        augment: AugmentStage | None = None,
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError("TrainStream needs at least one shard")
        if batches_per_epoch < 1:
            raise ValueError("batches_per_epoch must be >= 1")
        self.urls = list(urls)
        self.batches_per_epoch = batches_per_epoch
        self.config = config
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer, self.seed, self.augment = shuffle_buffer, seed, augment
        if augment is not None:
            augment.set_distributed(rank, world_size)  # workers may not see torch.distributed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose seeded order the next pass follows (also the augment stage's, e.g. DiME λ)."""
        self.epoch = epoch
        if self.augment is not None:
            self.augment.set_epoch(epoch)

    def resume(self, batches: int) -> None:
        """Drop the first ``batches`` of the next pass (already trained before a restart): the run continues there.

        The DataLoader takes batch ``i`` from worker ``i % W``; each worker drops the batches its stream made
        among the first ``batches`` (replayed: read and decoded, not collated, to reach the same sample, shuffle
        buffer and random state) and worker ``p`` plays stream ``(p + batches) % W``. ``0`` turns this off.
        """
        self.skip = batches
        if batches:
            log.warning("resuming epoch %d of the training stream after %d batches (replayed)", self.epoch, batches)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def worker_batches(self, worker: int, num_workers: int) -> int:
        """Batches worker ``worker`` of ``num_workers`` yields per pass (they sum to ``batches_per_epoch``)."""
        return self.batches_per_epoch // num_workers + int(worker < self.batches_per_epoch % num_workers)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers, slot, slots = worker_slot(self.rank, self.world_size)
        if self.skip:  # the DataLoader's round-robin starts at worker 0, the resumed stream at worker skip % W
            worker = (worker + self.skip) % num_workers
            slot = self.rank * num_workers + worker
        count = self.worker_batches(worker, num_workers)
        skip = len(range(worker, self.skip, num_workers))  # batches i < self.skip with i % num_workers == worker
        if count - skip <= 0:
            return iter(())

        def rng(purpose: int) -> random.Random:
            return stream_rng(self.seed, self.epoch, self.rank, worker, purpose)

        # slots entering the shard order at the same place (fewer shards than slots) split its samples
        starts = [k * len(self.urls) // slots for k in range(slots)]
        group = [k for k in range(slots) if starts[k] == starts[slot]]
        skips = SkipCounter()
        cfg = self.config
        stages: list[Any] = [
            partial(shard_cycle, self.urls, self.seed, self.epoch, slot, slots),
            cfg.tar_stage(skips),
            wds.slice(group.index(slot), None, len(group)),
        ]
        if self.shuffle_buffer > 0:
            stages.append(wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=rng(0)))
        stages.append(cfg.decode_stage(skips))
        if self.augment is not None:
            stages.append(self.augment)
        stages += [cfg.transform_stage(rng(1)), cfg.batch_stage(rng(2))]
        if skip:  # resumed mid-epoch: drop what was trained before the restart
            stages.append(partial(drop, count=skip))
        stages.append(wds.map(cfg.collate))
        return iter(wds.DataPipeline(*stages).with_epoch(nbatches=count - skip))


class EvalStream(IterableDataset):
    """Every sample of a split exactly once over all ranks and workers, in collated batches, skips accounted.

    By shard (``eval_split`` ``shard``, or ``auto`` with at least ranks x workers shards): slot
    ``worker x world_size + rank`` reads shards ``slot, slot + slots, ...`` whole, so each shard is read once in
    all (the egress of a remote split is its size). By sample (otherwise): each (rank, worker) reads all shards
    in card order and keeps sample ``i`` when ``i % world_size == rank`` and ``(i // world_size) % num_workers ==
    worker``, which holds for splits with fewer shards than ranks x workers, and samples go to ranks first, so
    every rank has data as soon as the split has ``world_size`` samples. Either way the same samples are scored
    once; ranks may get different numbers of batches; nothing is padded or repeated. Every batch has
    ``skipped`` (the :func:`skip_record` of each sample or shard this worker skipped since its previous batch)
    and ``read_bytes`` (bytes this worker read from the shards since then); what is left after the last batch
    comes in one more batch ``{"ids": [], "skipped": [...], "read_bytes": n}`` without samples.

    Args:
        urls: the split's shard paths in a fixed order.
        config: decoding, transform and batching settings.
        rank: this process's rank.
        world_size: number of ranks.
    """

    def __init__(self, urls: Sequence[str], config: StreamConfig, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        self.urls = list(urls)
        self.config = config
        self.rank, self.world_size = rank, world_size

    def by_shard(self, slots: int) -> bool:
        """Whether ``slots`` (ranks x workers) split this split by shard rather than by sample."""
        mode = self.config.eval_split
        return mode == "shard" or (mode == "auto" and len(self.urls) >= slots)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, _, _, slots = worker_slot(self.rank, self.world_size)
        slot = worker * self.world_size + self.rank  # rank-major: sample i -> rank i % world_size
        skips = SkipCounter(max_consecutive=math.inf, keep=True)  # a finite stream: skip whatever is bad, count it
        counter = ByteCounter()
        cfg = self.config
        if self.by_shard(slots):
            stages: list[Any] = [wds.SimpleShardList(self.urls[slot::slots]), cfg.tar_stage(skips, counter)]
        else:  # by sample, not by shard: a 1-shard split still feeds every rank
            stages = [wds.SimpleShardList(self.urls), cfg.tar_stage(skips, counter), wds.slice(slot, None, slots)]
        stages += [cfg.decode_stage(skips), cfg.transform_stage(None), cfg.batch_stage(None), wds.map(cfg.collate)]
        for batch in wds.DataPipeline(*stages):
            batch["skipped"] = skips.drain()
            batch["read_bytes"] = counter.drain()
            yield batch
        left, read = skips.drain(), counter.drain()
        if left or read:  # a worker whose last samples were all skipped still reports them, and its last bytes
            yield {"ids": [], "skipped": left, "read_bytes": read}
        bad = skips.count - skips.null
        if bad:
            log.warning("rank %d worker slot %d skipped %d bad samples or shards", self.rank, slot, bad)
        if skips.null:
            log.info("rank %d worker slot %d skipped %d samples whose label source %r is null (counted as skipped)",
                     self.rank, slot, skips.null, cfg.label_source)  # fmt: skip
