"""Predict on raw audio: find the inputs (files, folders, CSV manifests), decode them as ``ser-prepare`` does, batch.

:func:`load_model` is ``ser_lightning.load_model``; ``ser-predict`` (:mod:`ser_lightning.cli.predict`) drives a
:class:`Predictor` over the inputs :func:`find_inputs` lists. Audio goes through the shard writer's decoding
(:func:`~ser_lightning.data.audio_io.load_audio` with ``ser-prepare``'s defaults), then through the steps of the
DataModule's predict stream: resampling to the model's rate, the centered crop and the model's ``Collate``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from ser_lightning.data.audio_io import SILENCE_THRESHOLD, AudioRejected, check_audio, load_audio, single_thread_torch
from ser_lightning.data.stream.batching import Collate, plan_batches
from ser_lightning.data.stream.sample import transform_stage

log = logging.getLogger(__name__)

# ser-prepare's decoding: the shard writer's rate and --min-duration default, its silence threshold; long clips kept
PREPARE_SAMPLE_RATE = 16000
PREPARE_MIN_DURATION = 0.25
# extensions searched in folders: libsndfile's formats and their usual aliases (a file named directly is always read)
AUDIO_EXTENSIONS = frozenset({f".{k.lower()}" for k in sf.available_formats()} | {".aif", ".oga", ".opus"})


class InputError(ValueError):
    """A usage error in the inputs (missing path, bad manifest, missing transcripts): ``ser-predict`` exits 2."""


@dataclass(frozen=True)
class Item:
    """One input to predict: an audio file (``path``) or an array (``audio`` at ``sample_rate``)."""

    id: str
    path: str | None = None
    transcript: str | None = None
    audio: np.ndarray | None = None
    sample_rate: int | None = None
    speaker: str = ""  # the manifest's optional `speaker` (Qwen2-Audio's prompt names it, as in training)


# --------------------------------------------------------------------------------------------
# Inputs: files, folders, manifests, sidecar transcripts
# --------------------------------------------------------------------------------------------


def find_inputs(paths: Sequence[str | Path]) -> list[Item]:
    """Items of audio files, folders (searched recursively, sorted) and CSV manifests, in the order given.

    Ids: the manifest's ``id``, else the path relative to the PATH it was found under, without extension (a file
    named directly: its stem). Transcripts: the manifest's ``transcript``, else a ``.txt`` next to the audio.

    Raises:
        InputError: a path that does not exist, or a manifest without a ``path`` column.
    """
    items: list[Item] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_EXTENSIONS)
            items += [_file_item(f, f.relative_to(path).with_suffix("").as_posix()) for f in files]
        elif path.suffix.lower() == ".csv" and path.is_file():
            items += read_manifest(path)
        elif path.is_file():
            items.append(_file_item(path, path.stem))
        else:
            raise InputError(f"no such file or folder: {given}")
    return items


def read_manifest(path: str | Path) -> list[Item]:
    """A CSV manifest's items: ``path`` (relative to the CSV); optional ``id``, ``transcript``, ``speaker``."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if "path" not in (reader.fieldnames or []):
            raise InputError(f"{path}: a manifest needs a 'path' column (columns: {reader.fieldnames})")
        rows = list(reader)
    items = []
    for line, row in enumerate(rows, start=2):
        value = (row.get("path") or "").strip()
        if not value:
            raise InputError(f"{path}, line {line}: empty 'path'")
        audio = Path(value) if Path(value).is_absolute() else path.parent / value
        uid = (row.get("id") or "").strip() or Path(value).with_suffix("").as_posix()
        transcript = (row.get("transcript") or "").strip() or _file_item(audio, uid).transcript
        items.append(Item(uid, str(audio), transcript, speaker=(row.get("speaker") or "").strip()))
    return items


def _file_item(path: Path, uid: str) -> Item:
    """An item for a file, with the transcript of its ``.txt`` sidecar when there is one."""
    sidecar = path.with_suffix(".txt")
    transcript = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else None
    return Item(uid, str(path), transcript or None)


def array_items(
    inputs: Sequence[Any], transcripts: Sequence[str | None] | None, sample_rate: int | None
) -> list[Item]:
    """Items of :meth:`Predictor.predict`'s inputs: arrays (at ``sample_rate``) and paths, ``transcripts`` aligned."""
    if transcripts is not None and len(transcripts) != len(inputs):
        raise InputError(f"{len(transcripts)} transcripts for {len(inputs)} inputs")
    items: list[Item] = []
    for i, value in enumerate(inputs):
        text = None if transcripts is None else transcripts[i]
        if isinstance(value, str | Path):
            found = find_inputs([value])
            if text is not None:
                if len(found) != 1:
                    raise InputError(f"a transcript was given for {value}, which holds {len(found)} files")
                found = [Item(found[0].id, found[0].path, text)]
            items += found
            continue
        if sample_rate is None:
            raise InputError("arrays need sample_rate")
        items.append(Item(f"array{i}", None, text, np.asarray(value, dtype=np.float32), int(sample_rate)))
    return items


# --------------------------------------------------------------------------------------------
# The model and its data pieces
# --------------------------------------------------------------------------------------------


def load_model(ckpt: str | Path, *, backbone: str | None = None, device: str = "auto") -> Predictor:
    """A :class:`Predictor` for a checkpoint of ``train.py fit`` (no shards, no config needed).

    Args:
        ckpt: the checkpoint file.
        backbone: Qwen2-Audio only: the base model (hub id or local directory) instead of the stored one.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """
    from ser_lightning.models.checkpoint import checkpoint_info, restore_model

    on = resolve_device(device)
    model = restore_model(ckpt, backbone=backbone, map_location=on)  # a quantised base is built on its device
    return Predictor(model, checkpoint_info(ckpt), device=str(on))


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
    ``head_logits`` (AmbER²), ``experts`` (``{head: probabilities}``), then the model's own extra fields.

    Args:
        model: a ``DistributionModule`` (e.g. from ``restore_model``).
        info: the checkpoint's ``ser_lightning`` entry (``checkpoint_info``); its ``data`` gives ``crop_seconds``,
            ``max_text_length`` and ``text_tokenizer``.
        device: ``auto``, ``cpu`` or ``cuda``.
        batch_size: clips per batch (batches are sorted by length).
    """

    def __init__(
        self, model: Any, info: dict[str, Any] | None = None, device: str = "auto", batch_size: int = 8
    ) -> None:
        if batch_size < 1:
            raise InputError(f"batch size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        first = next(iter(model.parameters()), None)  # restore_model builds a quantised base on its device already
        move = first is not None and first.device.type != self.device.type
        self.model = (model.to(self.device) if move else model).eval()
        self.batch_size = batch_size
        data = dict((info or {}).get("data") or {})
        needs = getattr(model, "data_requirements", None)
        needs = dict(needs()) if callable(needs) else {}
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
            heads = self.model.head_logits(batch) if callable(getattr(self.model, "head_logits", None)) else None
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


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _load_tokenizer(source: str) -> Any:
    """The text tokenizer as ``SERDataModule.setup`` loads it (offline-aware, with a one-line error on a miss)."""
    from transformers import AutoTokenizer

    from ser_lightning.nn.pretrained import pretrained

    return pretrained(AutoTokenizer.from_pretrained, source, what="text tokenizer")
