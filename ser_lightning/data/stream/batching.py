"""Length-bucketed dynamic batching bounded by padded audio seconds, and the collate step.

A batch holds at most ``max_batch_size`` clips and at most ``max_batch_seconds`` of *padded* audio
(batch size x longest clip). Clips are gathered in a bucket buffer and sorted by length before being
cut into batches, so clips of a batch have similar lengths and padding stays small (the approach of
lhotse's ``DynamicBucketingSampler`` and ESPnet's ``numel`` batching, in a stream).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ser_lightning.types import Batch, BatchTransform

log = logging.getLogger(__name__)


def plan_batches(lengths: Sequence[int], max_batch_frames: int, max_batch_size: int) -> list[list[int]]:
    """Cut items into batches that respect the padded-size and count bounds, shortest items first.

    Items are sorted by length (stable) and filled greedily: an item joins the current batch while
    ``(batch size + 1) x its length <= max_batch_frames`` and the batch has fewer than ``max_batch_size``
    items. An item longer than ``max_batch_frames`` on its own forms a batch of one.

    Args:
        lengths: length of each item in samples (or any unit shared with ``max_batch_frames``).
        max_batch_frames: bound on batch size x longest item.
        max_batch_size: bound on the number of items in a batch.

    Returns:
        Batches as lists of indices into ``lengths``, in ascending order of length.
    """
    if max_batch_frames < 1 or max_batch_size < 1:
        raise ValueError("max_batch_frames and max_batch_size must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # ascending order: the new item is the longest of the batch it joins
        if current and (len(current) >= max_batch_size or (len(current) + 1) * lengths[i] > max_batch_frames):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


# webdataset batches by count (wds.batched); these batches are bounded by padded seconds and length-bucketed
def dynamic_batches(
    samples: Iterable[dict[str, Any]],
    sample_rate: int,
    max_batch_seconds: float,
    max_batch_size: int,
    bucket_buffer: int = 256,
    rng: random.Random | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Group decoded samples into length-bucketed lists bounded by padded seconds and count.

    Fills a buffer of ``bucket_buffer`` samples, sorts it by length and cuts it with
    :func:`plan_batches`. The last batch of a buffer, when it could still take a clip, is carried
    over once to the next buffer; at the end of the stream everything left is emitted. With ``rng``
    (training) ties in length are broken at random and the batches of a buffer are emitted in random
    order; without it (evaluation) the order is deterministic.

    Args:
        samples: decoded sample dicts with a 1-D ``audio`` array at ``sample_rate``.
        sample_rate: rate of the ``audio`` arrays, to turn seconds into samples.
        max_batch_seconds: bound on batch size x longest clip, in seconds.
        max_batch_size: bound on the number of clips per batch.
        bucket_buffer: number of samples sorted together.
        rng: random source for training; ``None`` for a deterministic order.

    Yields:
        Lists of sample dicts, one per batch.
    """
    if bucket_buffer < 1:
        raise ValueError("bucket_buffer must be >= 1")
    max_frames = int(max_batch_seconds * sample_rate)
    warned = False
    buffer: list[dict[str, Any]] = []

    def cut(items: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        nonlocal warned
        if rng is not None:
            rng.shuffle(items)  # random tie-breaking: the sort below is stable
        lengths = [len(s["audio"]) for s in items]
        plan = plan_batches(lengths, max_frames, max_batch_size)
        if not warned and any(len(b) == 1 and lengths[b[0]] > max_frames for b in plan):
            log.warning(
                "a clip is longer than max_batch_seconds=%s and forms a batch of its own; "
                "set crop_seconds to bound batch memory",
                max_batch_seconds,
            )
            warned = True
        return [[items[i] for i in b] for b in plan]

    carried: set[int] = set()  # id() of samples carried over once: never carried twice, so none starves
    for sample in samples:
        buffer.append(sample)
        if len(buffer) < bucket_buffer:
            continue
        batches = cut(buffer)
        tail = batches[-1]
        longest = max(len(s["audio"]) for s in tail)
        unfinished = len(tail) < max_batch_size and (len(tail) + 1) * longest <= max_frames
        if unfinished and not carried.intersection(id(s) for s in tail):
            buffer = batches.pop()  # carry the unfinished tail over to fill it from the next buffer
            carried = {id(s) for s in buffer}
        else:
            buffer = []
            carried = set()
        if rng is not None:
            rng.shuffle(batches)
        yield from batches
    if buffer:
        batches = cut(buffer)
        if rng is not None:
            rng.shuffle(batches)
        yield from batches


def expected_batch_size(
    durations: Sequence[float], max_batch_seconds: float, max_batch_size: int, crop_seconds: float | None = None
) -> float:
    """Mean clips per batch that :func:`dynamic_batches` reaches on clips of these durations.

    A clip of (cropped) length ``d`` sits in a batch of about ``b(d) = min(max_batch_size,
    max(1, floor(max_batch_seconds / d)))`` clips of similar length, so it takes ``1 / b(d)`` of a
    batch; the mean batch size is the harmonic mean of ``b(d)``. Exact when buckets are homogeneous,
    a slight over-estimate otherwise (mixed lengths in a batch pad to the longest).

    Args:
        durations: clip durations in seconds (a sample of the split is enough).
        max_batch_seconds: bound on batch size x longest clip, in seconds.
        max_batch_size: bound on clips per batch.
        crop_seconds: crop length applied before batching, or ``None``.

    Returns:
        The expected batch size; ``max_batch_size`` when ``durations`` is empty.
    """
    if not durations:
        return float(max_batch_size)
    sizes = []
    for d in durations:
        length = min(d, crop_seconds) if crop_seconds is not None else d
        sizes.append(min(max_batch_size, max(1, math.floor(max_batch_seconds / max(length, 1e-9)))))
    return len(sizes) / sum(1.0 / b for b in sizes)


class Collate:
    """Turn a list of decoded samples into the batch the models read: :class:`ser_lightning.types.Batch`.

    Every key and shape is listed there. ``entropy`` is each sample's stored exact entropy of the label source
    (``meta["entropy"][label_source]``), ``consensus`` the index in ``meta["classes"]`` of ``meta["consensus"]``
    (-1 when null or absent, and for a DiME mix). Samples without ``target`` (unlabelled audio, ``ser-predict``)
    give a batch without ``targets``, ``votes``, ``primary_votes`` and ``entropy``.

    Args:
        label_source: key of ``meta["votes"]`` holding the votes that match ``target``.
        tokenizer: a Hugging Face tokenizer (callable on a list of strings) or ``None``.
        max_text_length: truncation length for the tokenized transcripts.
        batch_transform: the model's own featurisation (e.g. a processor), run here in the loader workers:
            called with the collated batch, its returned keys are added to it.
    """

    def __init__(
        self,
        label_source: str = "primary",
        tokenizer: Any | None = None,
        max_text_length: int = 64,
        batch_transform: BatchTransform | None = None,
    ) -> None:
        self.label_source = label_source
        self.tokenizer = tokenizer
        self.max_text_length = max_text_length
        self.batch_transform = batch_transform

    def __call__(self, samples: Sequence[dict[str, Any]]) -> Batch:
        """Collate ``samples`` (decoded dicts with ``id``, ``audio``, ``meta``, ``target``) into a batch dict."""
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        lengths = [len(s["audio"]) for s in samples]
        audio = torch.zeros(len(samples), max(lengths), dtype=torch.float32)
        mask = torch.zeros(len(samples), max(lengths), dtype=torch.long)
        for row, (sample, n) in enumerate(zip(samples, lengths, strict=True)):
            audio[row, :n] = torch.as_tensor(np.asarray(sample["audio"], dtype=np.float32))
            mask[row, :n] = 1
        batch: Batch = {
            "audio": audio,
            "audio_mask": mask,
            "vad": torch.from_numpy(np.stack([_vad(s["meta"]) for s in samples])),
            "ids": [str(s["id"]) for s in samples],
            "transcripts": [str(s["meta"].get("transcript") or "") for s in samples],
            "speakers": [str(s["meta"].get("speaker") or "") for s in samples],
            "augmented": torch.tensor([bool(s["meta"].get("dime") or s.get("cropped")) for s in samples]),
            "consensus": torch.tensor([_consensus(s["meta"]) for s in samples], dtype=torch.long),
        }
        if any("target" in s for s in samples):  # unlabelled clips (ser-predict) have no targets, votes, entropy
            targets = np.stack([np.asarray(s["target"], dtype=np.float32) for s in samples])
            num_classes = targets.shape[1]
            batch["targets"] = torch.from_numpy(targets)
            batch["votes"] = torch.from_numpy(np.stack([self._votes(s, num_classes) for s in samples]))
            batch["primary_votes"] = torch.from_numpy(np.stack([_primary_votes(s, num_classes) for s in samples]))
            batch["entropy"] = torch.tensor([self._entropy(s) for s in samples], dtype=torch.float64)
        if self.tokenizer is not None:
            tokens = self.tokenizer(
                batch["transcripts"],
                padding=True,
                truncation=True,
                max_length=self.max_text_length,
                return_tensors="pt",
            )
            batch["text_input_ids"] = tokens["input_ids"].long()
            batch["text_attention_mask"] = tokens["attention_mask"].long()
        if self.batch_transform is not None:
            batch.update(self.batch_transform(batch))
        return batch

    def _entropy(self, sample: dict[str, Any]) -> float:
        try:
            return float(sample["meta"]["entropy"][self.label_source])
        except (KeyError, TypeError) as err:
            where = f"sample {sample.get('id')!r}"
            raise ValueError(f"{where} stores no entropy for label source {self.label_source!r}") from err

    def _votes(self, sample: dict[str, Any], num_classes: int) -> np.ndarray:
        votes = sample.get("votes")  # an augmentation may set the votes of a mixed clip
        if votes is None:
            votes = (sample["meta"].get("votes") or {}).get(self.label_source)
        if votes is None:
            return np.full(num_classes, math.nan, dtype=np.float32)
        return np.asarray(votes, dtype=np.float32)


def _primary_votes(sample: dict[str, Any], num_classes: int) -> np.ndarray:
    """The stored utterance's primary vote counts; NaN for a DiME mix (no utterance's votes) or none stored."""
    meta = sample["meta"]
    votes = None if meta.get("dime") else (meta.get("votes") or {}).get("primary")
    if votes is None or len(votes) != num_classes:
        return np.full(num_classes, math.nan, dtype=np.float32)
    return np.asarray(votes, dtype=np.float32)


def _consensus(meta: dict[str, Any]) -> int:
    """Class index of the sample's consensus label; -1 when it has none or is a DiME mix (no utterance's label)."""
    label = meta.get("consensus")
    if label is None or meta.get("dime"):
        return -1
    try:
        return list(meta["classes"]).index(label)
    except (KeyError, ValueError) as err:
        raise ValueError(f"sample {meta.get('id')!r}: consensus {label!r} is not one of its classes") from err


def _vad(meta: dict[str, Any]) -> np.ndarray:
    vad = meta.get("vad")
    if vad is None:
        return np.full(3, math.nan, dtype=np.float32)
    return np.asarray([math.nan if v is None else v for v in vad], dtype=np.float32)
