"""Predict on raw audio with a checkpoint alone: decode the inputs as ``ser-prepare`` does, batch, run the model.

:func:`load_model` is ``ser_lightning.load_model``; ``ser-predict`` (:mod:`ser_lightning.cli.predict`) drives a
:class:`Predictor` over the inputs :func:`~ser_lightning.inference.inputs.find_inputs` lists. Audio goes through the
shard writer's decoding (:func:`~ser_lightning.data.audio_io.load_audio` with ``ser-prepare``'s defaults), then
through the steps of the DataModule's predict stream: resampling to the model's rate, the centered crop and the
model's ``Collate``. Like ``cli``, this package sees a model and the data side together; it is the library the
entry points call, not an entry point.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from ser_lightning.data.audio_io import SILENCE_THRESHOLD, AudioRejected, check_audio, load_audio, single_thread_torch
from ser_lightning.data.stream.batching import Collate, plan_batches
from ser_lightning.data.stream.sample import transform_stage
from ser_lightning.inference.inputs import InputError, Item, array_items
from ser_lightning.types import Batch, ExpertHeads, SERModel

log = logging.getLogger(__name__)

# ser-prepare's decoding: the shard writer's rate and --min-duration default, its silence threshold; long clips kept
PREPARE_SAMPLE_RATE = 16000
PREPARE_MIN_DURATION = 0.25


def load_model(ckpt: str | Path, *, backbone: str | None = None, device: str = "auto") -> Predictor:
    """A :class:`Predictor` for a checkpoint of ``train.py fit`` (no shards, no config needed).

    Args:
        ckpt: the checkpoint file.
        backbone: Qwen2-Audio only: the base model (hub id or local directory) instead of the stored one.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """
    from ser_lightning.runs.checkpoint import CHECKPOINT_KEY, read_checkpoint, restore_model

    on = resolve_device(device)
    checkpoint = read_checkpoint(ckpt)  # read once: the model and the predictor's settings come from it
    model = restore_model(checkpoint, backbone=backbone, map_location=on)  # a quantised base is built on its device
    return Predictor(model, checkpoint[CHECKPOINT_KEY], device=str(on))


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu`` / ``cuda`` as given (CUDA must be available)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise InputError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda, but CUDA is not available")
    return torch.device(device)


class Predictor:
    """A trained model with the decoding and batching of its predict stream: ``predict`` gives one row per input.

    Rows: ``id``, ``path``, ``classes``, ``probabilities``, ``entropy`` (nats), ``top`` and, for models with
    several heads (:class:`~ser_lightning.types.ExpertHeads`, AmbER²), ``experts`` (``{head: probabilities}``), then
    the model's own extra fields.

    Args:
        model: a ``DistributionModule`` (e.g. from ``restore_model``).
        info: the checkpoint's ``ser_lightning`` entry (``checkpoint_info``); its ``data`` gives ``crop_seconds``,
            ``max_text_length`` and ``text_tokenizer``.
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: clips per batch (batches are sorted by length).
    """

    def __init__(
        self, model: SERModel, info: dict[str, Any] | None = None, device: str = "auto", batch_size: int = 8
    ) -> None:
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        first = next(iter(model.parameters()), None)  # restore_model builds a quantised base on its device already
        move = first is not None and first.device.type != self.device.type
        self.model = (model.to(self.device) if move else model).eval()
        self.batch_size = batch_size
        data = dict((info or {}).get("data") or {})
        needs = dict(model.data_requirements())
        self.sample_rate = int(needs.get("sample_rate") or data.get("sample_rate") or PREPARE_SAMPLE_RATE)
        self.crop_seconds: float | None = data.get("crop_seconds")
        tokenizer = needs.get("tokenizer") or data.get("text_tokenizer")
        self.reads_text = tokenizer is not None
        if isinstance(tokenizer, str | Path):
            tokenizer = _load_tokenizer(str(tokenizer))
        self.collate = Collate(
            "primary", tokenizer, int(data.get("max_text_length") or 64), needs.get("batch_transform")
        )

    @property
    def classes(self) -> list[str]:
        """The model's class names, in the order of ``probabilities``."""
        return list(self.model.classes)

    def missing_transcripts(self, items: Sequence[Item]) -> list[str]:
        """Paths (or ids) of the items without a transcript, when the model reads text; else ``[]``."""
        if not self.reads_text:
            return []
        return [item.path or item.id for item in items if item.transcript is None]

    def predict(
        self,
        paths_or_arrays: Any,
        transcripts: Sequence[str | None] | None = None,
        sample_rate: int | None = None,
    ) -> list[dict[str, Any]]:
        """One row per input, in input order (a folder or manifest counts as its files).

        Args:
            paths_or_arrays: a path or array, or a list of them: audio files, folders, CSV manifests, and 1-D
                (samples,) or 2-D (samples, channels) arrays at ``sample_rate``.
            transcripts: one per input (``None`` for a folder or manifest: their sidecars / column are read).
            sample_rate: the rate of the arrays, in Hz.

        Returns:
            The rows (see the class docstring); a rejected input gets ``{"id", "path", "rejected": reason}``.

        Raises:
            InputError: a missing path, arrays without ``sample_rate``, or missing transcripts for a text model.
        """
        single = isinstance(paths_or_arrays, str | Path | np.ndarray) or torch.is_tensor(paths_or_arrays)
        inputs = [paths_or_arrays] if single else list(paths_or_arrays)
        inputs = [x.detach().cpu().numpy() if torch.is_tensor(x) else x for x in inputs]
        items = array_items(inputs, transcripts, sample_rate)
        missing = self.missing_transcripts(items)
        if missing:
            raise InputError(f"the model reads transcripts; none for: {', '.join(missing)}")
        rows: list[dict[str, Any] | None] = [None] * len(items)
        for index, row in self.run(items):
            rows[index] = row
        return [r for r in rows if r is not None]

    def run(self, items: Sequence[Item], progress: Callable[[int], None] | None = None) -> Iterator[tuple[int, dict]]:
        """``(index, row)`` per item, batch by batch (shortest clips first); rejected items give ``rejected`` rows.

        ``progress(n)`` is called with the number of items each batch finished.
        """
        lengths: list[int] = []
        early: dict[int, str] = {}
        for i, item in enumerate(items):
            try:
                lengths.append(self._length(item))
            except AudioRejected as err:
                early[i] = str(err)
                lengths.append(0)
        todo = [i for i in range(len(items)) if i not in early]
        for i, reason in early.items():
            yield i, _rejected_row(items[i], reason)
        if progress is not None and early:
            progress(len(early))
        for batch in plan_batches([lengths[i] for i in todo], max_batch_frames=2**62, max_batch_size=self.batch_size):
            indices = [todo[b] for b in batch]
            yield from self._predict_batch(items, indices)
            if progress is not None:
                progress(len(indices))

    # ---------------------------------------------------------------- steps
    def _length(self, item: Item) -> int:
        """Samples of the item at the model's rate after the crop (for sorting; decoding checks the audio)."""
        if item.audio is not None:
            seconds = len(item.audio) / float(item.sample_rate or 1)
        else:
            try:
                info = sf.info(str(item.path))
                seconds = info.frames / info.samplerate
            except Exception:  # the reason is load_audio's, as ser-prepare would record it
                seconds = len(self._decode(item)) / PREPARE_SAMPLE_RATE
        if self.crop_seconds is not None:
            seconds = min(seconds, self.crop_seconds)
        return round(seconds * self.sample_rate)

    def _decode(self, item: Item) -> np.ndarray:
        """ser-prepare's decoding: float32 mono at 16 kHz; unreadable, empty, non-finite, short or silent rejected."""
        rules = {"silence_threshold": SILENCE_THRESHOLD}
        if item.audio is not None:
            rate = int(item.sample_rate or 0)
            return check_audio(item.audio, rate, PREPARE_SAMPLE_RATE, PREPARE_MIN_DURATION, **rules)
        return load_audio(item.path or "", PREPARE_SAMPLE_RATE, PREPARE_MIN_DURATION, **rules)

    def _predict_batch(self, items: Sequence[Item], indices: list[int]) -> Iterator[tuple[int, dict]]:
        samples = []
        with single_thread_torch():  # the same bytes as ser-prepare's pool workers
            for i in indices:
                try:
                    audio = self._decode(items[i])
                except AudioRejected as err:
                    yield i, _rejected_row(items[i], str(err))
                    continue
                meta = {"transcript": items[i].transcript or "", "speaker": items[i].speaker}
                samples.append({"id": str(i), "audio": audio, "sample_rate": PREPARE_SAMPLE_RATE, "meta": meta})
            # the predict stream's steps: resample to the model's rate, centered crop
            samples = list(transform_stage(samples, self.sample_rate, self.crop_seconds, None))
        if not samples:
            return
        batch = _to_device(self.collate(samples), self.device)
        with torch.inference_mode():
            records = self.model.predict_step(batch, 0)
            heads = self.model.head_logits(batch) if isinstance(self.model, ExpertHeads) else None
        experts = {k: v.float().softmax(-1).cpu().tolist() for k, v in (heads or {}).items()}
        for row, record in enumerate(records):
            i = int(record["id"])
            yield i, self._row(items[i], record, {k: v[row] for k, v in experts.items()})

    def _row(self, item: Item, record: dict[str, Any], experts: dict[str, list[float]]) -> dict[str, Any]:
        probs = record["probabilities"]
        row = {"id": item.id, "path": item.path, "classes": record["classes"], "probabilities": probs}
        row["entropy"] = record["entropy"]
        row["top"] = record["classes"][int(np.argmax(probs))]
        if experts:
            row["experts"] = experts
        extras = {k: v for k, v in record.items() if k not in ("id", "classes", "probabilities", "entropy")}
        return {**row, **{k: v for k, v in extras.items() if k not in row}}


def _rejected_row(item: Item, reason: str) -> dict[str, Any]:
    return {"id": item.id, "path": item.path, "rejected": reason}


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _load_tokenizer(source: str) -> Any:
    """The text tokenizer as ``SERDataModule.setup`` loads it (offline-aware, with a one-line error on a miss)."""
    from transformers import AutoTokenizer

    from ser_lightning.nn.pretrained import pretrained

    return pretrained(AutoTokenizer.from_pretrained, source, what="text tokenizer")
