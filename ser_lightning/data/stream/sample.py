"""One shard sample: decode it (:func:`decode_sample`), resample and crop it (:func:`transform_stage`).

The per-sample steps of the streams in :mod:`ser_lightning.data.stream.pipeline` (which re-exports them).
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import soundfile as sf

from ser_lightning.data import audio_io
from ser_lightning.data.stream.skips import NullLabelError, SampleDecodeError

_LABEL_FIELDS = ("distribution", "entropy")  # of the label source, in every sample JSON

Sample = dict[str, Any]




def decode_sample(raw: Sample, label_source: str = "primary", num_classes: int | None = None) -> Sample:
    """Turn one raw shard sample (``flac`` and ``json`` bytes) into the decoded sample dict.

    Args:
        raw: a webdataset sample with ``__key__``, ``flac`` and ``json`` members.
        label_source: which distribution of ``meta["distribution"]`` becomes the ``target``.
        num_classes: expected length of the target, checked when given.

    Returns:
        ``{"id", "audio" (float32 mono), "sample_rate", "meta", "target" (float32 (C,))}``.

    Raises:
        NullLabelError: the JSON's ``label_source`` is null (``ser-annotate merge``'s ``synthetic`` of an
            utterance without a valid answer): a :class:`SampleDecodeError` the stream skips and counts apart.
        SampleDecodeError: when a member is missing, the audio does not decode or is empty, the JSON has
            no ``distribution`` or ``entropy`` for ``label_source``, or the target is not a distribution.
    """
    key, url = raw.get("__key__"), raw.get("__url__")
    try:
        meta = json.loads(raw["json"])
        audio, sample_rate = sf.read(io.BytesIO(raw["flac"]), dtype="float32", always_2d=True)
    except Exception as exn:
        raise SampleDecodeError(f"{type(exn).__name__}: {exn}", key, url) from exn
    label = {f: meta[f].get(label_source) if isinstance(meta.get(f), dict) else None for f in _LABEL_FIELDS}
    if label["distribution"] is None and label_source in (meta.get("votes") or {}):  # present, but null
        raise NullLabelError(f"label source {label_source!r} is null (no labels of it)", key, url)
    if label["distribution"] is None:
        raise SampleDecodeError(f"JSON has no distribution[{label_source!r}]", key, url)
    target = np.asarray(label["distribution"], dtype=np.float32)
    audio = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if audio.size == 0:
        raise SampleDecodeError("empty audio", key, url)
    if target.ndim != 1 or (num_classes is not None and target.size != num_classes):
        raise SampleDecodeError(f"target of shape {target.shape}, expected ({num_classes},)", key, url)
    if not np.all(np.isfinite(target)) or np.any(target < 0) or target.sum() <= 0:
        raise SampleDecodeError(f"target {target.tolist()} is not a distribution", key, url)
    if not isinstance(label["entropy"], int | float):
        raise SampleDecodeError(f"JSON has no entropy[{label_source!r}] (the ambiguity bins need it)", key, url)
    return {
        "id": str(meta.get("id", raw.get("__key__"))),
        "audio": np.ascontiguousarray(audio),
        "sample_rate": int(sample_rate),
        "meta": meta,
        "target": target / target.sum(),
    }


def resample(audio: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample a 1-D float32 clip with ``torchaudio.functional.resample`` (a no-op when the rates match)."""
    if orig_rate == new_rate:
        return audio
    return audio_io.resample(audio, orig_rate, new_rate)


def crop(audio: np.ndarray, max_samples: int | None, rng: random.Random | None = None) -> np.ndarray:
    """Cut a clip longer than ``max_samples`` to that length: at a random offset with ``rng``, else centered."""
    if max_samples is None or len(audio) <= max_samples:
        return audio
    excess = len(audio) - max_samples
    start = rng.randint(0, excess) if rng is not None else excess // 2
    return audio[start : start + max_samples]


def transform_stage(
    src: Iterable[Sample], sample_rate: int, crop_seconds: float | None, rng: random.Random | None
) -> Iterator[Sample]:
    """Resample each clip to ``sample_rate``, then crop it to ``crop_seconds`` (random with ``rng``, else centered)."""
    max_samples = None if crop_seconds is None else max(1, round(crop_seconds * sample_rate))
    for sample in src:
        audio = resample(sample["audio"], sample["sample_rate"], sample_rate)
        cropped = crop(audio, max_samples, rng)
        # a shortened clip is no longer the stored utterance: per-utterance caches must not key it by id
        yield {**sample, "audio": cropped, "sample_rate": sample_rate, "cropped": len(cropped) < len(audio)}
