"""``SERDataModule``: WebDataset shards (docs/shard-format.md) -> batches of audio, rater distributions and text.

The data side never imports a model: the model's sample rate and text tokenizer come in through the
arguments or :meth:`SERDataModule.connect` (litgpt ``litgpt/data/base.py``), and what the model needs of the data
goes out as :meth:`SERDataModule.facts` (``ser_lightning.types.DataFacts``), which the CLI hands to the model. Which
shards and how many samples each stage streams is :class:`~ser_lightning.data.stream.stages.StageSets`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader

from ser_lightning.data.shards.card import read_durations
from ser_lightning.data.shards.storage import Location, RetryPolicy
from ser_lightning.data.stream.assigned import AssignedStreamConfig
from ser_lightning.data.stream.batching import Collate, expected_batch_size
from ser_lightning.data.stream.loader import EpochDataLoader, ignore_stop_signals, train_position, trainer_epoch
from ser_lightning.data.stream.pipeline import AugmentStage, EvalStream, StreamConfig, TrainStream, rank_world
from ser_lightning.data.stream.stages import StageSets
from ser_lightning.types import BatchTransform, DataFacts, EvalExpectation, SERModel

log = logging.getLogger(__name__)

DURATION_PEEK = 512  # clips whose JSON durations estimate the mean batch size


class SERDataModule(L.LightningDataModule):
    """Streams WebDataset shards of one corpus as length-bucketed batches for speech emotion recognition.

    Train batches per epoch, per rank: ``train_batches_per_epoch`` when given, else
    ``ceil((num_samples["train"] - null + synthetic) / (world_size x b))`` (``null``: train samples whose label
    source is null, skipped; ``synthetic``: the DiME-Aug samples
    an ``augment`` stage adds per epoch, its ``total``) where ``b`` is the expected batch size: the
    harmonic mean over clips of ``min(max_batch_size, floor(max_batch_seconds / d))`` with ``d`` the
    (cropped) durations read from the JSON of the first train shard (up to 512 clips). So one epoch
    over all ranks is about one pass over the train split; every rank yields exactly that many
    batches, however uneven the shards (the stream is endless and cut by count).

    Batches are :class:`ser_lightning.types.Batch`; evaluation batches also carry ``skipped`` (what the stream
    skipped, with reasons; see ``EvalStream``), which the model adds to the samples it scored and compares with the
    pass's expectation (:meth:`facts`) at its end.

    Args:
        shards: directory with ``card.json`` and the ``{split}-NNNNNN.tar`` shards: a local path, or a URL
            (``s3://bucket/prefix``, ``gs://bucket/prefix``, ``http(s)://host/prefix``; see
            :mod:`ser_lightning.data.shards.storage` for credentials). Remote shards stream, never downloaded whole.
        label_source: vote source used as target: ``primary``, or ``merged`` (MSP-Podcast; refused from a card that
            does not record its rule, ``label_sources.merged.rule``: re-run ``ser-prepare``), or ``synthetic`` /
            ``combined`` (``ser-annotate merge``). Samples whose source is null (``synthetic`` without a valid
            answer; counted in the card's ``null_labels``) are skipped with a count, and in evaluation reported
            as skipped with a reason, so the pass stays complete.
        sample_rate: the model's sample rate in Hz; audio is resampled to it. ``connect`` may override it.
        max_batch_seconds: bound on the padded audio of a batch (batch size x longest clip), in seconds.
        max_batch_size: bound on clips per batch.
        crop_seconds: clips longer than this are cropped (at random in training, centered in evaluation);
            ``None`` keeps whole clips.
        train_batches_per_epoch: batches per rank per training epoch; ``None`` estimates one pass over the
            train split (see above).
        num_workers: DataLoader worker processes per rank.
        shuffle_buffer: raw training samples held in the shuffle buffer (0: no sample shuffling).
        bucket_buffer: decoded samples sorted by length together before being cut into batches.
        seed: seed of shard order, shuffling, crops and batch order; each epoch gets a fresh,
            reproducible order from ``(seed, epoch, rank, worker)``.
        text_tokenizer: Hugging Face tokenizer (hub id or local path) for the transcripts; ``None``: no
            text tensors unless ``connect`` hands one in.
        max_text_length: tokens kept per transcript.
        val_split: split used by ``val_dataloader``.
        test_split: split used by ``test_dataloader``, or a list of splits (``[test1, test2]``): ``train.py test``
            (and ``test_after_fit``) then runs one pass per split, its metrics prefixed ``test/<split>/``
            (:meth:`use_test_split` selects the one the loader streams).
        predict_split: split used by ``predict_dataloader``.
        augment: optional stage over decoded training samples, inserted right after decoding
            (e.g. DiME-Aug's ``DimeMixer``), implementing :class:`~ser_lightning.data.stream.pipeline.AugmentStage`.
        allow_partial_eval: when a validation or test pass scores (plus skips) fewer samples than the card
            lists, only warn and mark the metrics ``complete: false`` instead of stopping the run with an error.
        split_assignment: JSON file ``{id: "train" | "val" | "test"}`` (``ser-experiment``'s folds): the shards of
            every split are read and filtered by id (samples not in it are left out, counted), overriding the
            card's splits and ``val_split`` / ``test_split`` (``predict`` streams the assigned test set); bin edges,
            class counts, the train mean and the evaluation's expected counts come from one scan of the
            samples' JSON (:meth:`assigned`).
        read_retries: tries of a remote read before the run stops naming the shard (exponential back-off from
            0.5 s, up to 8 s between tries; a cut connection resumes where it stopped).
        shard_cache: local directory caching remote shards read in full (repeated evaluation, multi-epoch
            training); ``None``: no cache. A cached copy must match the card's SHA-256.
        shard_cache_gb: the cache's size cap in GB (least recently used shards go first).
        eval_split: ``auto`` (default): an evaluation split with at least ranks x workers shards is divided by
            shard, each read once in all; a smaller one by sample, every (rank, worker) reading every shard.
            ``shard`` / ``sample`` force one way. The same samples are scored either way.
    """

    def __init__(
        self,
        shards: str,
        label_source: str = "primary",
        sample_rate: int = 16000,
        max_batch_seconds: float = 64.0,
        max_batch_size: int = 32,
        crop_seconds: float | None = None,
        train_batches_per_epoch: int | None = None,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        bucket_buffer: int = 256,
        seed: int = 0,
        text_tokenizer: str | None = None,
        max_text_length: int = 64,
        val_split: str = "val",
        test_split: str | list[str] = "test",
        predict_split: str = "test",
        augment: AugmentStage | None = None,
        allow_partial_eval: bool = False,
        split_assignment: str | None = None,
        read_retries: int = 6,
        shard_cache: str | None = None,
        shard_cache_gb: float = 50.0,
        eval_split: Literal["auto", "shard", "sample"] = "auto",
    ) -> None:
        super().__init__()
        _check_positive(sample_rate=sample_rate, max_batch_seconds=max_batch_seconds, max_batch_size=max_batch_size)
        _check_positive(bucket_buffer=bucket_buffer, max_text_length=max_text_length)
        if crop_seconds is not None:
            _check_positive(crop_seconds=crop_seconds)
        if train_batches_per_epoch is not None:
            _check_positive(train_batches_per_epoch=train_batches_per_epoch)
        if num_workers < 0 or shuffle_buffer < 0:
            raise ValueError("num_workers and shuffle_buffer must be >= 0")
        self.save_hyperparameters(ignore=["augment"])
        self.sample_rate = sample_rate
        self.max_batch_seconds = max_batch_seconds
        self.max_batch_size = max_batch_size
        self.crop_seconds = crop_seconds
        self.train_batches_per_epoch = train_batches_per_epoch
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.bucket_buffer = bucket_buffer
        self.seed = seed
        self.text_tokenizer = text_tokenizer
        self.max_text_length = max_text_length
        self.test_splits = [test_split] if isinstance(test_split, str) else [str(s) for s in test_split]
        if not self.test_splits or len(set(self.test_splits)) != len(self.test_splits):
            raise ValueError(f"test_split must name one split or distinct splits, got {test_split!r}")
        if split_assignment is not None and len(self.test_splits) > 1:
            raise ValueError("a split_assignment has one test set: give one test_split with it")
        self.splits = {"val": val_split, "test": self.test_splits[0], "predict": predict_split}
        self.augment = augment
        self.allow_partial_eval = allow_partial_eval
        if read_retries < 1 or shard_cache_gb <= 0:
            raise ValueError(f"read_retries must be >= 1 and shard_cache_gb > 0, got {read_retries}, {shard_cache_gb}")
        self.retry = RetryPolicy(attempts=read_retries)
        self.shard_cache = shard_cache
        self.shard_cache_gb = shard_cache_gb
        self.eval_split = eval_split
        self.tokenizer: Any | None = None
        self.batch_transform: BatchTransform | None = None
        self.stages = StageSets(shards, label_source, self.splits, split_assignment)

    # ---------------------------------------------------------------- card facts
    @property
    def shards(self) -> Location:
        """The shard directory: a local path or a URL (held by :attr:`stages`, the one place it is kept)."""
        return self.stages.shards

    @property
    def label_source(self) -> str:
        """The vote source used as target."""
        return self.stages.label_source

    @property
    def split_assignment(self) -> str | None:
        """The ``split_assignment`` file, or ``None``."""
        return self.stages.split_assignment

    @property
    def card(self) -> dict[str, Any]:
        """The shard directory's ``card.json``, read once, checked to list ``label_source`` (and ``merged``'s rule)."""
        return self.stages.card

    @property
    def classes(self) -> list[str]:
        """Class names, in the order of the target's columns."""
        return list(self.card["classes"])

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return len(self.card["classes"])

    @property
    def bin_edges(self) -> list[float] | None:
        """Inner tertile edges (nats) of the label source's stored entropies over the train split, or ``None``."""
        edges = self._label_stat("tertile_edges")
        return None if edges is None else [float(e) for e in edges]

    @property
    def class_counts(self) -> list[float] | None:
        """Train samples per plurality class of the label source (ties toward the first class), for CB-CE."""
        counts = self._label_stat("class_counts")
        return None if counts is None else [float(c) for c in counts]

    @property
    def train_mean_distribution(self) -> list[float] | None:
        """Mean target distribution of the label source over the train split (the train-mean reference predictor)."""
        mean = self._label_stat("mean_distribution")
        return None if mean is None else [float(p) for p in mean]

    def _label_stat(self, key: str) -> Any:
        stats = self.stages.label_stats()
        return None if stats is None else stats.get(key)

    def num_samples(self, split: str) -> int:
        """Number of samples of ``split`` according to the card."""
        return self.stages.num_samples(split)

    def null_samples(self, split: str) -> int:
        """Samples of ``split`` whose label source is null (the card's ``null_labels``): the streams skip them."""
        return self.stages.null_samples(split)

    def eval_expectation(self, stage: str) -> EvalExpectation:
        """What an evaluation pass (``stage``: ``val``/``test``) must account for: split, expected count, train mean."""
        return self.stages.expectation(stage, self.allow_partial_eval)

    def assigned(self) -> dict[str, Any]:
        """The one scan of ``split_assignment`` over every shard (see :meth:`StageSets.assigned`)."""
        return self.stages.assigned()

    def facts(self) -> DataFacts:
        """Everything a model receives from this DataModule (the CLI hands it over with ``model.connect_data``).

        Call after :meth:`connect`: the sample rate and tokenizer are the model's by then.
        """
        return DataFacts(
            num_classes=self.num_classes,
            classes=self.classes,
            bin_edges=self.bin_edges,
            class_counts=self.class_counts,
            crop_seconds=self.crop_seconds,
            max_text_length=self.max_text_length,
            text_tokenizer=self.text_tokenizer,
            label_source=self.label_source,
            sample_rate=self.sample_rate,
            max_batch_size=self.max_batch_size,
            expectations={stage: self.eval_expectation(stage) for stage in ("val", "test")},
            damaged_shards=self.stages.damaged_shards,
        )

    def use_test_split(self, split: str) -> None:
        """Make ``split`` (one of ``test_split``'s) the one the test loader streams and the facts' expectation names."""
        if split not in self.test_splits:
            raise ValueError(f"{split!r} is not one of the test splits {self.test_splits}")
        self.splits["test"] = split

    # ---------------------------------------------------------------- model pieces
    def connect(
        self,
        sample_rate: int | None = None,
        tokenizer: Any | None = None,
        batch_transform: BatchTransform | None = None,
    ) -> None:
        """Take the model's sample rate, text tokenizer (an object, or a hub id / local path) and batch transform.

        ``batch_transform`` (picklable) runs on each collated batch in the loader workers and adds its keys (e.g.
        Qwen2-Audio's processor features). Call before the dataloaders are built (LightningCLI: after
        instantiation, before ``fit``).
        """
        if batch_transform is not None:
            self.batch_transform = batch_transform
        if sample_rate is not None:
            _check_positive(sample_rate=sample_rate)
            self.sample_rate = int(sample_rate)
        if isinstance(tokenizer, str | os.PathLike):
            self.text_tokenizer, self.tokenizer = str(tokenizer), None
        elif tokenizer is not None:
            self.tokenizer = tokenizer

    def setup(self, stage: str | None = None) -> None:
        """Check the card against the configuration, load the tokenizer, and offer the model its facts.

        Reading the card checks the label source. Under ``train.py`` the CLI has handed the model
        :meth:`facts` already; a ``Trainer`` used from Python gets them here, once, if its model has none.
        """
        needed = {"fit": "train", "validate": "val", "test": "test", "predict": "predict"}.get(stage or "")
        if needed is not None:  # the stage's split (or the assigned set) exists; log its null-label samples
            self.stages.urls(needed)
            null = self.stages.count(needed, null=True)
            if null:
                log.info(
                    "label source %r is null in %d of the %d %r samples: they are skipped (in evaluation, counted "
                    "as skipped with a reason)", self.label_source, null, self.stages.count(needed),
                    self.stages.split_name(needed),
                )  # fmt: skip
        if self.tokenizer is None and self.text_tokenizer is not None:
            from transformers import AutoTokenizer

            from ser_lightning.nn.pretrained import pretrained

            self.tokenizer = pretrained(AutoTokenizer.from_pretrained, self.text_tokenizer, what="text tokenizer")
        module = None if self.trainer is None else self.trainer.lightning_module
        if isinstance(module, SERModel) and module.data_facts is None:  # a Trainer used from Python, not the CLI
            module.connect_data(self.facts())

    # ---------------------------------------------------------------- loaders
    def train_batches(self, world_size: int) -> int:
        """Training batches per rank per epoch (see the class docstring for the rule)."""
        if self.train_batches_per_epoch is not None:
            return self.train_batches_per_epoch
        durations = read_durations(self.stages.urls("train")[0], DURATION_PEEK)
        size = expected_batch_size(durations, self.max_batch_seconds, self.max_batch_size, self.crop_seconds)
        synthetic = 0 if self.augment is None else int(self.augment.total)  # DiME-Aug adds these per epoch
        labelled = self.stages.count("train") - self.stages.count("train", null=True)  # null-label samples are skipped
        return max(1, math.ceil((labelled + synthetic) / (world_size * size)))

    def train_dataloader(self) -> DataLoader:
        """Endless shuffled stream cut to the same number of batches on every rank."""
        rank, world_size = self._rank_world()
        if self.stages.count("train") and self.stages.count("train", null=True) >= self.stages.count("train"):
            raise ValueError(f"label source {self.label_source!r} is null in every train sample of {self.shards}")
        if self.augment is not None and self.augment.label_source != self.label_source:
            raise ValueError(
                f"the augment stage mixes {self.augment.label_source!r} targets but the DataModule trains on "
                f"label_source {self.label_source!r}; rebuild the index with ser-index --label-source"
            )
        dataset = TrainStream(
            self.stages.urls("train"),
            self.train_batches(world_size),
            self._stream_config("train"),
            rank=rank,
            world_size=world_size,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            augment=self.augment,
        )
        return EpochDataLoader(
            dataset,
            epoch_fn=lambda: trainer_epoch(self.trainer),
            position_fn=lambda: train_position(self.trainer),
            **self._loader_kwargs(),
        )

    def val_dataloader(self) -> DataLoader:
        """Every sample of ``val_split`` exactly once over ranks and workers."""
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        """Every sample of ``test_split`` exactly once over ranks and workers."""
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        """Every sample of ``predict_split`` exactly once over ranks and workers."""
        return self._eval_loader("predict")

    def _eval_loader(self, stage: str) -> DataLoader:
        rank, world_size = self._rank_world()
        dataset = EvalStream(self.stages.urls(stage), self._stream_config(stage), rank=rank, world_size=world_size)
        return DataLoader(dataset, **self._loader_kwargs())

    def _stream_config(self, stage: str | None = None) -> StreamConfig:
        if self.tokenizer is None and self.text_tokenizer is not None:
            self.setup()
        config = StreamConfig(
            label_source=self.label_source,
            num_classes=self.num_classes,
            sample_rate=self.sample_rate,
            crop_seconds=self.crop_seconds,
            max_batch_seconds=self.max_batch_seconds,
            max_batch_size=self.max_batch_size,
            bucket_buffer=self.bucket_buffer,
            collate=Collate(self.label_source, self.tokenizer, self.max_text_length, self.batch_transform),
            access=self.stages.shard_access(self.retry, self.shard_cache, int(self.shard_cache_gb * 1e9)),
            eval_split=self.eval_split,
        )
        if self.split_assignment is None or stage is None:
            return config
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        return AssignedStreamConfig(**fields, keep=self.stages.assigned_keys(stage))

    def _loader_kwargs(self) -> dict[str, Any]:
        kwargs = {"batch_size": None, "num_workers": self.num_workers, "pin_memory": torch.cuda.is_available()}
        return {**kwargs, "worker_init_fn": ignore_stop_signals} if self.num_workers else kwargs

    def _rank_world(self) -> tuple[int, int]:
        """(rank, world size): the trainer's when attached, else the process's (:func:`rank_world`)."""
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return rank_world()


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
