"""Audio for the shards: decode any file to 16 kHz mono, resample, encode FLAC, in a deterministic process pool.

The shard writer (:mod:`ser_lightning.data.shards`) stores what :func:`load_audio` and :func:`encode_flac`
make of each file. Resampling always runs on one torch thread (in the main process and in every worker),
so one worker and many give byte-identical audio.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

# --------------------------------------------------------------------------------------------
# Decode, mono, resample, FLAC
# --------------------------------------------------------------------------------------------


# Peak (full scale = 1.0) below which a clip counts as silent: -80 dBFS, about 3 LSB of 16-bit PCM.
SILENCE_THRESHOLD = 1e-4


class AudioRejected(ValueError):
    """An audio file that cannot become a sample; the message is the reason stored in ``rejected.jsonl``."""


def load_audio(
    path: str | Path,
    sample_rate: int = 16000,
    min_duration: float = 0.0,
    *,
    silence_threshold: float = 0.0,
    max_duration: float | None = None,
) -> np.ndarray:
    """Read any file libsndfile decodes as float32 mono at ``sample_rate``.

    Channels are averaged; other rates are resampled with ``torchaudio.functional.resample``.

    Args:
        path: audio file.
        sample_rate: target rate in Hz.
        min_duration: shortest accepted duration in seconds (measured before resampling).
        silence_threshold: reject a clip whose mono peak ``max |x|`` (full scale 1.0) is below this;
            0 accepts silence. The shard writer uses :data:`SILENCE_THRESHOLD`.
        max_duration: reject a clip longer than this many seconds; ``None`` accepts any length.

    Returns:
        A 1-D float32 array.

    Raises:
        AudioRejected: the file is missing, does not decode, is empty, has non-finite samples, is
            shorter than ``min_duration``, longer than ``max_duration`` or silent.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioRejected("missing audio file")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioRejected(f"audio does not decode: {err}") from err
    return check_audio(
        data, int(rate), sample_rate, min_duration, silence_threshold=silence_threshold, max_duration=max_duration
    )


def check_audio(
    data: np.ndarray,
    rate: int,
    sample_rate: int = 16000,
    min_duration: float = 0.0,
    *,
    silence_threshold: float = 0.0,
    max_duration: float | None = None,
) -> np.ndarray:
    """:func:`load_audio`'s rules on decoded audio: reject, downmix, resample (so arrays get the files' treatment).

    Args:
        data: samples ``(T,)`` or ``(T, channels)`` at ``rate`` Hz.
        rate: the rate of ``data``.
        sample_rate: target rate in Hz.
        min_duration: shortest accepted duration in seconds (measured before resampling).
        silence_threshold: reject a clip whose mono peak is below this (0 accepts silence).
        max_duration: reject a clip longer than this many seconds; ``None`` accepts any length.

    Returns:
        A 1-D float32 array at ``sample_rate``.

    Raises:
        AudioRejected: as :func:`load_audio` (empty, non-finite, too short, too long, silent).
    """
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise AudioRejected(f"audio of shape {data.shape}: expected (samples,) or (samples, channels)")
    if data.size == 0:
        raise AudioRejected("empty audio")
    if not np.isfinite(data).all():
        raise AudioRejected("non-finite samples")
    duration = data.shape[0] / rate
    if duration < min_duration:
        raise AudioRejected(f"too short: {duration:.3f} s < {min_duration:g} s")
    if max_duration is not None and duration > max_duration:
        raise AudioRejected(f"too long: {duration:.1f} s > {max_duration:g} s")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    peak = float(np.abs(mono).max())
    if peak < silence_threshold:
        raise AudioRejected(f"silent: peak {peak:.2e} < {silence_threshold:g} full scale")
    if rate != sample_rate:
        mono = resample(mono, int(rate), sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


def resample(audio: np.ndarray, orig_freq: int, new_freq: int) -> np.ndarray:
    """Resample a 1-D clip to float32 with ``torchaudio.functional.resample`` (default sinc filter)."""
    import torch
    import torchaudio.functional as taf

    out = taf.resample(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), orig_freq, new_freq)
    return out.numpy()


def encode_flac(audio: np.ndarray, sample_rate: int = 16000) -> tuple[bytes, int]:
    """Encode mono float audio in [-1, 1] as FLAC PCM_16 in memory.

    Samples outside [-1, 1] (resampling can overshoot) are clipped, never wrapped around.

    Returns:
        The FLAC bytes and the number of clipped samples.
    """
    audio = np.asarray(audio, dtype=np.float32)
    clipped = int(np.count_nonzero(np.abs(audio) > 1.0))
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue(), clipped


# --------------------------------------------------------------------------------------------
# One file per job, in order, in a spawn process pool
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioJob:
    """One file to decode, resample and encode."""

    path: str
    sample_rate: int
    min_duration: float
    silence_threshold: float = 0.0
    max_duration: float | None = None  # reject longer clips; None keeps them


@dataclass(frozen=True)
class AudioResult:
    """The FLAC bytes of a job, or ``flac=None`` and the rejection ``reason``."""

    flac: bytes | None
    num_samples: int = 0
    clipped: int = 0
    reason: str | None = None


def process_audio(job: AudioJob) -> AudioResult:
    """Worker: decode + encode one file; any failure becomes a rejection, never an exception."""
    try:
        audio = load_audio(
            job.path,
            job.sample_rate,
            job.min_duration,
            silence_threshold=job.silence_threshold,
            max_duration=job.max_duration,
        )
        flac, clipped = encode_flac(audio, job.sample_rate)
    except AudioRejected as err:
        return AudioResult(None, reason=str(err))
    except Exception as err:  # one bad file must not stop the run; the reason is recorded
        return AudioResult(None, reason=f"audio failed: {type(err).__name__}: {err}")
    return AudioResult(flac, len(audio), clipped)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


@contextmanager
def single_thread_torch() -> Iterator[None]:
    """Run torch on one thread inside the block (so resampling gives the same bytes as in a pool worker)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def ordered_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int) -> Iterator[Any]:
    """``map(fn, items)`` in order, in a spawn process pool when ``workers > 1``, with bounded look-ahead."""
    if workers <= 1:
        with single_thread_torch():
            yield from map(fn, items)
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
        pending: deque[Future[Any]] = deque()
        todo = iter(items)
        for item in todo:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 8 * workers:
                break
        while pending:
            result = pending.popleft().result()
            for item in todo:
                pending.append(pool.submit(fn, item))
                break
            yield result


# --------------------------------------------------------------------------------------------
# What preparation counts about the kept audio (the card's "audio_checks")
# --------------------------------------------------------------------------------------------

DEFAULT_MAX_DURATION = 60.0  # seconds; longer clips are counted and warned (kept unless rejection is asked for)


@dataclass
class AudioChecks:
    """Counts of clipped and over-long kept clips, with the thresholds used, for the card and the log."""

    silence_threshold: float = SILENCE_THRESHOLD
    max_duration: float | None = DEFAULT_MAX_DURATION
    reject_over_max_duration: bool = False
    clipped_utterances: int = 0
    clipped_samples: int = 0
    long_utterances: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)  # kind -> utterance ids, for the log

    def job(self, path: str, sample_rate: int, min_duration: float) -> AudioJob:
        """The decode job of one file under these thresholds."""
        reject_after = self.max_duration if self.reject_over_max_duration else None
        return AudioJob(path, sample_rate, min_duration, self.silence_threshold, reject_after)

    def add(self, utterance_id: str, result: AudioResult, sample_rate: int) -> None:
        """Count one kept clip: samples clipped to [-1, 1] at encoding, duration over ``max_duration``."""
        examples = self.examples
        if result.clipped:
            self.clipped_utterances += 1
            self.clipped_samples += result.clipped
            examples.setdefault("clipped", []).append(utterance_id)
        if self.max_duration is not None and result.num_samples / sample_rate > self.max_duration:
            self.long_utterances += 1
            examples.setdefault("long", []).append(utterance_id)

    def warn(self, logger: Any) -> None:
        """One WARNING per kind of problem, naming up to 5 utterances."""
        examples = self.examples
        if self.clipped_utterances:
            logger.warning(
                "%d kept utterances had %d samples outside [-1, 1] (loud float audio or resampling overshoot), "
                "clipped: %s",
                self.clipped_utterances,
                self.clipped_samples,
                _some(examples.get("clipped", [])),
            )
        if self.long_utterances:
            logger.warning(
                "%d kept utterances are longer than --max-duration %g s: %s",
                self.long_utterances,
                self.max_duration,
                _some(examples.get("long", [])),
            )

    def card(self) -> dict[str, Any]:
        """The card's ``audio_checks`` entry (thresholds and counts; no utterance ids)."""
        return {
            "silence_threshold": self.silence_threshold,
            "max_duration": self.max_duration,
            "reject_over_max_duration": self.reject_over_max_duration,
            "clipped_utterances": self.clipped_utterances,
            "clipped_samples": self.clipped_samples,
            "long_utterances": self.long_utterances,
        }


def _some(ids: list[str], n: int = 5) -> str:
    return ", ".join(ids[:n]) + (f" ... (+{len(ids) - n})" if len(ids) > n else "")
