"""``SERDataModule``: WebDataset shards (docs/shard-format.md) -> batches of audio, rater distributions and text.

The data side never imports a model: the model's sample rate and text tokenizer come in through the
arguments or :meth:`SERDataModule.connect` (litgpt ``litgpt/data/base.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from ser_lightning.data.shards.card import (
    CARD_NAME,
    check_label_rule,
    iter_shard_meta,
    label_source_stats,
    read_card,
    read_durations,
    verify_shards,
)
from ser_lightning.data.shards.writer import sample_key
from ser_lightning.data.stream.assigned import AssignedStreamConfig, read_assignment, scan_assignment
from ser_lightning.data.stream.batching import Collate, expected_batch_size
from ser_lightning.data.stream.loader import EpochDataLoader
from ser_lightning.data.stream.pipeline import AugmentStage, EvalStream, StreamConfig, TrainStream, rank_world

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

    Batch dict: ``audio`` (B, T) float32 zero-padded, ``audio_mask`` (B, T) long (1 = valid),
    ``targets`` (B, C) float32, ``votes`` (B, C) float32, ``entropy`` (B,) float64 (nats: the sample's
    stored entropy of the label source), ``consensus`` (B,) long (the corpus's consensus class, -1 when none),
    ``vad`` (B, 3) float32 (NaN when absent), ``ids`` and
    ``transcripts`` (list[str]), and with a tokenizer ``text_input_ids`` and ``text_attention_mask`` (B, L) long.
    Evaluation batches also carry ``skipped`` (what the stream skipped, with reasons; see ``EvalStream``), which
    the model adds to the samples it scored and compares with :meth:`eval_expectation` at the end of a pass.

    Args:
        shards: directory with ``card.json`` and the ``{split}-NNNNNN.tar`` shards.
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
        test_split: split used by ``test_dataloader``.
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
        test_split: str = "test",
        predict_split: str = "test",
        augment: AugmentStage | None = None,
        allow_partial_eval: bool = False,
        split_assignment: str | None = None,
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
        self.shards = Path(shards)
        self.label_source = label_source
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
        self.splits = {"val": val_split, "test": test_split, "predict": predict_split}
        self.augment = augment
        self.allow_partial_eval = allow_partial_eval
        self.tokenizer: Any | None = None
        self.batch_transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self._card: dict[str, Any] | None = None
        self._label_stats: dict[str, Any] | None = None
        self.split_assignment = split_assignment
        self._assigned: dict[str, Any] | None = None

    # ---------------------------------------------------------------- card
    @property
    def card(self) -> dict[str, Any]:
        """The shard directory's ``card.json``, read once, checked to list ``label_source`` (and ``merged``'s rule)."""
        if self._card is None:
            card = read_card(self.shards, self.label_source)
            check_label_rule(card, self.label_source, self.shards / CARD_NAME)  # an old-rule merged: re-run ser-prepare
            self._card = card
        return self._card

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
        stats = self.label_stats()
        edges = None if stats is None else stats["tertile_edges"]
        return None if edges is None else [float(e) for e in edges]

    @property
    def class_counts(self) -> list[float] | None:
        """Train samples per plurality class of the label source (ties toward the first class), for CB-CE."""
        stats = self.label_stats()
        counts = None if stats is None else stats["class_counts"]
        return None if counts is None else [float(c) for c in counts]

    @property
    def train_mean_distribution(self) -> list[float] | None:
        """Mean target distribution of the label source over the train split (the train-mean reference predictor)."""
        stats = self.label_stats()
        mean = None if stats is None else stats.get("mean_distribution")
        return None if mean is None else [float(p) for p in mean]

    def label_stats(self) -> dict[str, Any] | None:
        """``tertile_edges``, ``class_counts``, ``mean_distribution`` of the label source over the training set.

        ``None``: no train split. Read from the card's ``label_sources``; a card written before it (or its
        ``mean_distribution``) existed costs one scan of the train split's sample JSON (logged), as will a
        training set that is not a whole split.
        """
        if self._label_stats is None and self.split_assignment is not None:
            self._label_stats = self.assigned()["stats"]
        if self._label_stats is None:
            stats = self.card.get("label_sources", {}).get(self.label_source)
            if stats is None or "mean_distribution" not in stats:
                if not self.card.get("shards", {}).get("train"):
                    return None
                log.info("%s: the card lacks label_sources; scanning the train split's sample JSON once", self.shards)
                meta = iter_shard_meta(self.shards, "train", sources=[self.label_source])
                stats = label_source_stats(meta, [self.label_source], self.num_classes)[self.label_source]
            self._label_stats = stats
        return self._label_stats

    def shard_paths(self, split: str) -> list[str]:
        """Paths of the split's shards in card order."""
        names = self.card.get("shards", {}).get(split)
        if not names:
            known = ", ".join(sorted(self.card.get("shards", {}))) or "none"
            raise ValueError(f"split {split!r} has no shards in {self.shards / 'card.json'} (splits: {known})")
        return [str(self.shards / name) for name in names]

    def num_samples(self, split: str) -> int:
        """Number of samples of ``split`` according to the card."""
        return int(self.card.get("num_samples", {}).get(split, 0))

    def null_samples(self, split: str) -> int:
        """Samples of ``split`` whose label source is null (the card's ``null_labels``): the streams skip them."""
        return int(self.card.get("null_labels", {}).get(self.label_source, {}).get(split, 0))

    def eval_expectation(self, stage: str) -> dict[str, Any]:
        """What an evaluation pass (``stage``: ``val``/``test``) must account for, read by the model at epoch end.

        ``split``, ``expected`` (the card's sample count), ``allow_partial`` and ``train_mean`` (for the
        train-mean reference predictor, or ``None``).
        """
        return {
            "split": self._split_name(stage),
            "expected": self._count(stage),
            "allow_partial": bool(self.allow_partial_eval),
            "train_mean": self.train_mean_distribution,
        }

    def damaged_shards(self, split: str) -> list[str]:
        """One message per damaged shard of ``split`` (see :func:`~ser_lightning.data.shards.card.verify_shards`).

        An assigned set (``split_assignment``) is read from every split's shards: all of them are checked.
        """
        if self.split_assignment is not None and split not in self.card.get("shards", {}):
            return [m for s in self.card["shards"] for m in verify_shards(self.shards, s, self.card)]
        return verify_shards(self.shards, split, self.card)

    # ---------------------------------------------------------------- split assignment
    def assigned(self) -> dict[str, Any]:
        """:func:`~ser_lightning.data.stream.assigned.scan_assignment` of ``split_assignment`` over every shard.

        One scan of the samples' JSON (read once): counts per assigned set, samples left out, bin edges, class
        counts and the train mean of the assigned training samples.
        """
        if self._assigned is None:
            if self.split_assignment is None:
                raise ValueError("no split_assignment given")
            metas = iter_shard_meta(self.shards, sources=[self.label_source])
            scan = scan_assignment(metas, read_assignment(self.split_assignment), self.label_source, self.num_classes)
            if not scan["counts"]["train"]:
                raise ValueError(f"{self.split_assignment}: no sample of {self.shards} is assigned to train")
            log.info("split_assignment %s: %s; %d samples of %s not in it are left out",
                     self.split_assignment, scan["counts"], scan["left_out"], self.shards)  # fmt: skip
            if scan["missing"]:
                log.warning("split_assignment %s: %d assigned ids are in no shard of %s (e.g. %r)",
                            self.split_assignment, scan["missing"], self.shards, scan["missing_example"])  # fmt: skip
            self._assigned = scan
        return self._assigned

    def _assigned_set(self, stage: str) -> str:
        return "test" if stage == "predict" else stage

    def _split_name(self, stage: str) -> str:
        """The card split a stage streams, or ``assigned <set>`` under ``split_assignment``."""
        if self.split_assignment is not None:
            return f"assigned {self._assigned_set(stage)}"
        return "train" if stage == "train" else self.splits[stage]

    def _urls(self, stage: str) -> list[str]:
        """Shards a stage reads: its split's, or under ``split_assignment`` every split's (filtered by id)."""
        if self.split_assignment is None:
            return self.shard_paths(self._split_name(stage))
        return [path for split in self.card.get("shards", {}) for path in self.shard_paths(split)]

    def _count(self, stage: str, null: bool = False) -> int:
        """Samples a stage streams (its card split or assigned set); ``null``: those whose label source is null."""
        if self.split_assignment is None:
            split = self._split_name(stage)
            return self.null_samples(split) if null else self.num_samples(split)
        return int(self.assigned()["null" if null else "counts"][self._assigned_set(stage)])

    # ---------------------------------------------------------------- model pieces
    def connect(
        self,
        sample_rate: int | None = None,
        tokenizer: Any | None = None,
        batch_transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
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
        """Check the card against the configuration (reading it checks the label source) and load the tokenizer."""
        needed = {"fit": "train", "validate": "val", "test": "test", "predict": "predict"}.get(stage or "")
        if needed is not None:  # the stage's split (or the assigned set) exists; log its null-label samples
            self._urls(needed)
            null = self._count(needed, null=True)
            if null:
                log.info(
                    "label source %r is null in %d of the %d %r samples: they are skipped (in evaluation, counted "
                    "as skipped with a reason)", self.label_source, null, self._count(needed), self._split_name(needed),
                )  # fmt: skip
        if self.tokenizer is None and self.text_tokenizer is not None:
            from transformers import AutoTokenizer

            from ser_lightning.nn.pretrained import pretrained

            self.tokenizer = pretrained(AutoTokenizer.from_pretrained, self.text_tokenizer, what="text tokenizer")

    # ---------------------------------------------------------------- loaders
    def train_batches(self, world_size: int) -> int:
        """Training batches per rank per epoch (see the class docstring for the rule)."""
        if self.train_batches_per_epoch is not None:
            return self.train_batches_per_epoch
        durations = read_durations(self._urls("train")[0], DURATION_PEEK)
        size = expected_batch_size(durations, self.max_batch_seconds, self.max_batch_size, self.crop_seconds)
        synthetic = 0 if self.augment is None else int(self.augment.total)  # DiME-Aug adds these per epoch
        labelled = self._count("train") - self._count("train", null=True)  # null-label samples are skipped
        return max(1, math.ceil((labelled + synthetic) / (world_size * size)))

    def train_dataloader(self) -> DataLoader:
        """Endless shuffled stream cut to the same number of batches on every rank."""
        rank, world_size = self._rank_world()
        if self._count("train") and self._count("train", null=True) >= self._count("train"):
            raise ValueError(f"label source {self.label_source!r} is null in every train sample of {self.shards}")
        if self.augment is not None and self.augment.label_source != self.label_source:
            raise ValueError(
                f"the augment stage mixes {self.augment.label_source!r} targets but the DataModule trains on "
                f"label_source {self.label_source!r}; rebuild the index with ser-index --label-source"
            )
        dataset = TrainStream(
            self._urls("train"),
            self.train_batches(world_size),
            self._stream_config("train"),
            rank=rank,
            world_size=world_size,
            shuffle_buffer=self.shuffle_buffer,
            seed=self.seed,
            augment=self.augment,
        )
        position = self._train_position
        return EpochDataLoader(dataset, epoch_fn=self._trainer_epoch, position_fn=position, **self._loader_kwargs())

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
        dataset = EvalStream(self._urls(stage), self._stream_config(stage), rank=rank, world_size=world_size)
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
        )
        if self.split_assignment is None or stage is None:
            return config
        keep = frozenset(sample_key(i) for i, s in read_assignment(self.split_assignment).items()
                         if s == self._assigned_set(stage))  # fmt: skip
        fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        return AssignedStreamConfig(**fields, keep=keep)

    def _loader_kwargs(self) -> dict[str, Any]:
        return {"batch_size": None, "num_workers": self.num_workers, "pin_memory": torch.cuda.is_available()}

    def _rank_world(self) -> tuple[int, int]:
        """(rank, world size): the trainer's when attached, else the process's (:func:`rank_world`)."""
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return rank_world()

    def _trainer_epoch(self) -> int | None:
        # the epoch Lightning hands samplers: on resuming an end-of-epoch checkpoint current_epoch still lags by one
        return None if self.trainer is None else self.trainer.fit_loop.epoch_progress.current.processed

    def _train_position(self) -> tuple[int, int]:
        """(epoch, its batches trained so far) where a resumed run's stream goes on; the next epoch once one ends."""
        if self.trainer is None:
            return 0, 0
        loop = self.trainer.fit_loop
        epoch = max(0, loop.epoch_progress.current.ready - 1)  # ready counts epochs started, at every save point
        if loop.epoch_loop.batch_progress.is_last_batch:  # saved at the epoch's end (validation, epoch end hooks)
            return epoch + 1, 0
        return epoch, loop.epoch_loop.batch_progress.current.processed


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value}")
