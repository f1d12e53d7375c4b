"""Tiny shard directories for the tests, written by ``ser_lightning.data.shards.write_shards``.

Import it by name (``from shard_fixtures import ...``) from any test: pytest puts ``tests/`` on
``sys.path`` for ``tests/conftest.py`` (rootdir-relative "prepend" import mode, no ``__init__.py``), and
processes spawned by a test inherit that path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tarfile
import tempfile
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import webdataset as wds

from ser_lightning.corpora.record import UtteranceRecord
from ser_lightning.data.shards.card import CARD_NAME, read_card, shard_paths
from ser_lightning.data.shards.writer import SHARD_PATTERN, sample_key, write_shards

CLASSES = ("Anger", "Happiness", "Neutral", "Sadness")
RATE = 16000
NOT_FLAC = b"not a flac stream" * 8


def tone(seconds: float, freq: float = 440.0, rate: int = RATE) -> np.ndarray:
    """A sine clip in [-0.5, 0.5], float32."""
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.5 * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def utterance(uid: str, split: str, votes: Sequence[float], **fields: Any) -> UtteranceRecord:
    """A record over :data:`CLASSES` with ``primary`` votes; its audio is handed to :func:`write_clips` beside it.

    ``fields`` set the other record fields (``transcript``, ``speaker``, ``corpus``, ``vad``, ``vad_scale``).
    """
    defaults = {"corpus": "synthetic", "transcript": "", "speaker": "spk"}
    return UtteranceRecord(
        id=uid,
        split=split,
        audio_path=Path(f"{uid}.wav"),
        classes=CLASSES,
        votes={"primary": np.asarray(votes, dtype=np.float64)},
        **{**defaults, **fields},
    )


def write_clips(
    clips: Iterable[tuple[UtteranceRecord, np.ndarray]],
    out_dir: str | Path,
    *,
    maxcount: int = 1000,
    shard_sizes: Mapping[str, Sequence[int]] | None = None,
    corrupt: Collection[str] = (),
) -> dict[str, Any]:
    """Write ``(record, 16 kHz mono audio)`` pairs with ``write_shards``; return the card.

    The audio goes through a 16-bit WAV file: float audio as ``round(x * 32768)``, int16 as it is, so a
    clip below 0.5 in magnitude is stored (and pooled by ``ser-index``) sample for sample. No clip is
    too short (``min_duration=0``); a rejected record fails the test that wrote it.

    Args:
        clips: the utterances and their audio.
        out_dir: the shard directory.
        maxcount: samples per shard at most.
        shard_sizes: split -> sizes of its shards, to re-pack the written samples (in order) into uneven
            shards, which ``write_shards`` never writes.
        corrupt: ids whose FLAC bytes are replaced by bytes that do not decode (needs ``shard_sizes``).
    """
    with tempfile.TemporaryDirectory(prefix="clips-") as tmp:
        records = []
        for n, (record, audio) in enumerate(clips):
            path = Path(tmp) / f"{n:06d}.wav"
            sf.write(path, _pcm16(audio), RATE, subtype="PCM_16")
            records.append(dataclasses.replace(record, audio_path=path))
        card = write_shards(records, out_dir, min_duration=0.0, maxcount=maxcount, progress=False)
    if card["rejected"]:
        raise AssertionError(f"test clips rejected: {(Path(out_dir) / 'rejected.jsonl').read_text()}")
    if shard_sizes is not None:
        card = _repack(Path(out_dir), shard_sizes, {sample_key(uid) for uid in corrupt})
    elif corrupt:
        raise ValueError("corrupt needs shard_sizes")
    return card


def _pcm16(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.dtype == np.int16:
        return audio
    return np.round(audio * 32768).clip(-32768, 32767).astype(np.int16)


def _shard_info(path: Path) -> dict[str, Any]:
    """``shard_info`` of a re-packed shard: its sample count and SHA-256 (no decoding: a corrupt member counts)."""
    with tarfile.open(path) as tar:
        samples = len({m.name.split(".", 1)[0] for m in tar if m.isfile()})
    return {"samples": samples, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _repack(out_dir: Path, shard_sizes: Mapping[str, Sequence[int]], corrupt_keys: set[str]) -> dict[str, Any]:
    """Re-pack each split's samples, in order, into shards of the given sizes; rewrite the card's shard lists."""
    card = read_card(out_dir)
    for split, sizes in shard_sizes.items():
        urls = [str(p) for p in shard_paths(out_dir, split)]
        samples = [
            {"__key__": s["__key__"], "flac": s["flac"], "json": s["json"]}
            for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        ]
        if sum(sizes) != len(samples):
            raise ValueError(f"shard sizes {list(sizes)} do not add up to the {len(samples)} {split} samples")
        for url in urls:
            Path(url).unlink()
        names = [SHARD_PATTERN.format(split=split, index=k) for k in range(len(sizes))]
        ends = np.cumsum(sizes).tolist()
        for name, start, end in zip(names, [0, *ends[:-1]], ends, strict=True):
            with wds.TarWriter(str(out_dir / name)) as sink:
                for s in samples[start:end]:
                    sink.write({**s, "flac": NOT_FLAC} if s["__key__"] in corrupt_keys else s)
        card["shards"][split] = names
        if "shard_info" in card:  # the repacked shards are the card's now (a corrupt member is as written)
            for url in urls:
                card["shard_info"].pop(Path(url).name, None)
            card["shard_info"].update({name: _shard_info(out_dir / name) for name in names})
    (out_dir / CARD_NAME).write_text(json.dumps(card, indent=2), encoding="utf-8")
    return card


def write_test_shards(
    out_dir: str | Path,
    shard_sizes: Mapping[str, Sequence[int]],
    seed: int = 0,
    min_seconds: float = 0.2,
    max_seconds: float = 1.5,
    corrupt: Collection[str] = (),
) -> Path:
    """A random corpus with ``shard_sizes[split][k]`` samples in shard ``k`` of each split; returns ``out_dir``.

    Ids look like ``{split}.{n:04d}`` (with a dot, so ``__key__`` differs from ``id``); each clip is a
    tone of ``min_seconds``-``max_seconds`` with 5 votes and the transcript ``utterance {id} says hello``;
    every fourth has no ``vad``. Ids in ``corrupt`` get FLAC bytes that do not decode.
    """
    rng = np.random.default_rng(seed)
    clips = []
    for split, sizes in shard_sizes.items():
        for n in range(1, sum(sizes) + 1):
            uid = f"{split}.{n - 1:04d}"
            seconds = float(rng.uniform(min_seconds, max_seconds))
            votes = rng.multinomial(5, rng.dirichlet(np.ones(len(CLASSES))))
            vad = None if n % 4 == 0 else rng.uniform(1, 5, size=3).round(3).tolist()
            record = utterance(
                uid,
                split,
                votes,
                transcript=f"utterance {uid} says hello",
                speaker=f"spk{n % 3}",
                vad=vad,
                vad_scale=None if vad is None else (1.0, 5.0),
            )
            clips.append((record, tone(seconds, freq=200 + 10 * (n % 50))))
    write_clips(clips, out_dir, shard_sizes=shard_sizes, corrupt=corrupt)
    return Path(out_dir)
