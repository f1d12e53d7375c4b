"""Build the DiME-Aug neighbour index and minority-class audio pool once, beside the shards.

Two passes over the training shards (webdataset, soundfile decoding):

1. metadata only: the dominant class of every utterance (plurality of the label source's votes, ties
   toward the first class), the counts per class and the minority classes;
2. audio of the minority-class utterances only: hand-made features (and/or a frozen encoder's), and
   the 16 kHz PCM_16 audio appended to one memory-mappable pool.

The k nearest neighbours are searched inside each minority class, by Euclidean distance on
standardised features. Written into ``<shards>/dime/``:

- ``index.json``: ``version``, ``split``, ``label_source``, ``classes``, ``ratio``, ``k``,
  ``sample_rate``, ``train_size``, ``shards``, ``counts`` (class -> utterances), ``minority_classes``,
  ``deficit`` (class -> deficit-mode amount), ``features`` (the feature configuration), ``dominant``
  (utterance id -> class, whole split), ``neighbours`` (minority utterance id -> ids of its k nearest
  neighbours, nearest first) and ``pool`` (``audio``/``offsets`` file names, ``dtype``, and aligned
  lists ``ids``, ``classes``, ``meta`` = each pooled utterance's shard JSON);
- ``pool_audio.npy``: int16 audio of the pooled clips concatenated (the FLAC samples, lossless);
- ``pool_offsets.npy``: int64 offsets, clip ``p`` is ``audio[offsets[p]:offsets[p + 1]]``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio
from tqdm.auto import tqdm

from ser_lightning.data.dime.maths import dime_amounts, minority_classes, nearest_neighbours, standardise
from ser_lightning.data.shards import storage
from ser_lightning.data.shards.card import iter_tar_samples, read_card
from ser_lightning.labels import plurality

logger = logging.getLogger(__name__)

Encoder = Callable[[np.ndarray, int, str], np.ndarray]
"""A frozen encoder: ``(float32 audio, sample_rate, transcript) -> 1-D feature vector``."""

INDEX_FILE = "index.json"
POOL_AUDIO_FILE = "pool_audio.npy"
POOL_OFFSETS_FILE = "pool_offsets.npy"
INDEX_VERSION = 1

FEATURE_BLOCKS = ("acoustic", "lexical", "encoder")
_N_FFT, _HOP = 400, 160  # 25 ms windows, 10 ms hop at 16 kHz


@dataclass(frozen=True)
class FeatureConfig:
    """Which features describe an utterance for the neighbour search.

    Args:
        blocks: any of ``"acoustic"`` (MFCC mean/std, RMS and zero-crossing-rate mean/std, duration),
            ``"lexical"`` (word and character counts, hashed bag of words) and ``"encoder"`` (the
            output of the ``encoder`` callable handed to :func:`build_dime_index`).
        n_mfcc: MFCC coefficients.
        n_mels: mel bands behind the MFCCs.
        hash_dim: buckets of the hashed bag of words.
        balance_blocks: after z-scoring, divide each block by sqrt(its dimension) so that every block
            weighs the same in the distance however many columns it has.
    """

    blocks: tuple[str, ...] = ("acoustic", "lexical")
    n_mfcc: int = 13
    n_mels: int = 40
    hash_dim: int = 32
    balance_blocks: bool = True

    def __post_init__(self) -> None:
        unknown = [b for b in self.blocks if b not in FEATURE_BLOCKS]
        if unknown or not self.blocks:
            raise ValueError(f"feature blocks must be a non-empty subset of {FEATURE_BLOCKS}, got {self.blocks}")


class FeatureExtractor:
    """Per-utterance feature blocks for a :class:`FeatureConfig`.

    Args:
        config: the feature configuration.
        encoder: the frozen encoder, required when ``"encoder"`` is among ``config.blocks``.
        sample_rate: the audio's sample rate.
    """

    def __init__(self, config: FeatureConfig, encoder: Encoder | None = None, sample_rate: int = 16000) -> None:
        if "encoder" in config.blocks and encoder is None:
            raise ValueError("feature block 'encoder' needs an encoder callable")
        self.config, self.encoder, self.sample_rate = config, encoder, sample_rate
        self._mfcc = torchaudio.transforms.MFCC(
            sample_rate=sample_rate,
            n_mfcc=config.n_mfcc,
            melkwargs={"n_fft": _N_FFT, "hop_length": _HOP, "n_mels": config.n_mels},
        )

    def acoustic(self, audio: np.ndarray) -> np.ndarray:
        """MFCC mean and std, frame RMS mean and std, zero-crossing rate mean and std, duration (s)."""
        x = np.asarray(audio, dtype=np.float32)
        duration = x.shape[0] / self.sample_rate
        if x.shape[0] < _N_FFT:
            x = np.pad(x, (0, _N_FFT - x.shape[0]))
        with torch.no_grad():
            mfcc = self._mfcc(torch.from_numpy(x)).numpy()
        frames = np.lib.stride_tricks.sliding_window_view(x, _N_FFT)[::_HOP]
        rms = np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1))
        zcr = (np.diff(np.signbit(frames), axis=1) != 0).mean(axis=1)
        return np.concatenate(
            [mfcc.mean(axis=1), mfcc.std(axis=1), [rms.mean(), rms.std(), zcr.mean(), zcr.std(), duration]]
        ).astype(np.float64)

    def lexical(self, transcript: str) -> np.ndarray:
        """Word count, character count and a term-frequency hashed bag of words (CRC32 buckets)."""
        words = re.findall(r"[\w']+", transcript.casefold())
        bag = np.zeros(self.config.hash_dim, dtype=np.float64)
        for w in words:
            bag[zlib.crc32(w.encode("utf-8")) % self.config.hash_dim] += 1.0
        if words:
            bag /= len(words)
        return np.concatenate([[len(words), len(transcript.strip())], bag])

    def __call__(self, audio: np.ndarray, transcript: str) -> dict[str, np.ndarray]:
        """The configured feature blocks of one utterance."""
        out: dict[str, np.ndarray] = {}
        if "acoustic" in self.config.blocks:
            out["acoustic"] = self.acoustic(audio)
        if "lexical" in self.config.blocks:
            out["lexical"] = self.lexical(transcript)
        if "encoder" in self.config.blocks:
            assert self.encoder is not None  # checked in __init__
            out["encoder"] = np.asarray(self.encoder(audio, self.sample_rate, transcript), dtype=np.float64).ravel()
        return out


def feature_matrix(rows: Sequence[Mapping[str, np.ndarray]], balance_blocks: bool = True) -> np.ndarray:
    """Stack per-utterance feature blocks into a standardised ``(N, D)`` matrix (each block z-scored)."""
    if not rows:
        return np.zeros((0, 0))
    parts = []
    for block in rows[0]:
        x = standardise(np.stack([r[block] for r in rows]))
        parts.append(x / math.sqrt(x.shape[1]) if balance_blocks else x)
    return np.concatenate(parts, axis=1)


# --------------------------------------------------------------------------------------------
# Reading shards
# --------------------------------------------------------------------------------------------


def _dataset(urls: list[storage.Location], json_only: bool) -> Iterator[dict[str, Any]]:
    """The samples of the shards in order (local or remote), as ``{"__key__", "json", "flac"}`` bytes."""
    for url in urls:
        for key, members in iter_tar_samples(url):
            yield {"__key__": key, **({"json": members["json"]} if json_only else members)}


def _label_counts(meta: Mapping[str, Any], label_source: str) -> list[float] | None:
    """The votes (else the distribution) of ``label_source``; ``None`` when the source is null for this utterance."""
    for key in ("votes", "distribution"):
        table = meta.get(key) or {}
        if label_source in table and table[label_source] is not None:
            return table[label_source]
    if label_source in (meta.get("distribution") or {}):
        return None  # a nullable source (e.g. ``synthetic`` without a valid answer): no label to balance on
    sources = sorted(set(meta.get("votes") or {}) | set(meta.get("distribution") or {}))
    raise KeyError(f"utterance {meta.get('id')!r} has no label source {label_source!r}; it has {sources}")


def _decode_int16(flac: bytes, uid: str) -> tuple[np.ndarray, int]:
    audio, sr = sf.read(io.BytesIO(flac), dtype="int16", always_2d=False)
    if audio.ndim != 1:
        raise ValueError(f"utterance {uid!r}: expected mono audio, got shape {audio.shape}")
    return audio, sr


def _write_pool(out_dir: Path, clips: Iterator[np.ndarray]) -> np.ndarray:
    """Append int16 clips to ``pool_audio.npy`` (via a raw temporary file); return the offsets."""
    tmp = out_dir / (POOL_AUDIO_FILE + ".tmp")
    offsets = [0]
    with tmp.open("wb") as f:
        for clip in clips:
            f.write(np.ascontiguousarray(clip, dtype=np.int16).tobytes())
            offsets.append(offsets[-1] + clip.shape[0])
    total = offsets[-1]
    if total == 0:
        np.save(out_dir / POOL_AUDIO_FILE, np.zeros(0, dtype=np.int16))
    else:
        src = np.memmap(tmp, dtype=np.int16, mode="r", shape=(total,))
        dst = np.lib.format.open_memmap(out_dir / POOL_AUDIO_FILE, mode="w+", dtype=np.int16, shape=(total,))
        chunk = 1 << 24
        for start in range(0, total, chunk):
            dst[start : start + chunk] = src[start : start + chunk]
        dst.flush()
        del src, dst
    tmp.unlink()
    result = np.asarray(offsets, dtype=np.int64)
    np.save(out_dir / POOL_OFFSETS_FILE, result)
    return result


# --------------------------------------------------------------------------------------------
# Building the index
# --------------------------------------------------------------------------------------------


def build_dime_index(
    shards_dir: str | os.PathLike[str],
    label_source: str = "primary",
    ratio: float = 0.3,
    k: int = 3,
    features: FeatureConfig | None = None,
    encoder: Encoder | None = None,
    split: str = "train",
    progress: bool = False,
    out_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Build ``<shards_dir>/dime/`` (index and minority-class pool) for DiME-Aug, or ``out_dir``.

    Args:
        shards_dir: a ``ser-prepare --out`` directory (``card.json`` and shards), local or a remote prefix.
        label_source: which votes define the dominant class and the pooled targets.
        ratio: minority threshold relative to the majority class (the authors use 0.3).
        k: neighbours kept per minority utterance (the authors use 3).
        features: feature configuration (default: acoustic + lexical).
        encoder: frozen encoder callable for the ``"encoder"`` feature block.
        split: the split to index (the training split).
        progress: show progress bars.
        out_dir: where the index goes (default ``<shards_dir>/dime``; required for remote shards). The DataModule
            reads an index from a local directory or a remote prefix alike (``DimeMixer(index_dir=...)``).

    Returns:
        The index directory.
    """
    shards_dir = storage.as_location(shards_dir)
    if out_dir is None and storage.is_remote(shards_dir):
        raise ValueError(f"{shards_dir} is remote: give the index a local out_dir (ser-index --out DIR)")
    out_dir = Path(out_dir) if out_dir is not None else Path(shards_dir) / "dime"
    config = features or FeatureConfig()
    card = read_card(shards_dir, label_source)
    classes: list[str] = list(card["classes"])
    sample_rate = int(card.get("sample_rate", 16000))
    names = card.get("shards", {}).get(split) or []
    if not names:
        raise ValueError(f"card.json of {shards_dir} lists no {split!r} shards")
    urls = [storage.join(shards_dir, n) for n in names]
    expected = (card.get("num_samples") or {}).get(split)

    # Pass 1: dominant class of every utterance.
    dominant: dict[str, str] = {}
    null_labels = 0
    for sample in tqdm(_dataset(urls, json_only=True), total=expected, desc=f"{split}: labels", disable=not progress):
        meta = json.loads(sample["json"])
        if meta["id"] in dominant:
            raise ValueError(f"utterance id {meta['id']!r} occurs twice in the {split!r} shards")
        votes = _label_counts(meta, label_source)
        if votes is None:
            null_labels += 1  # not in the class counts nor the pool: the DataModule skips it too
            continue
        label, _ = plurality(np.asarray([votes]))
        dominant[meta["id"]] = classes[int(label[0])]
    if null_labels:
        logger.warning("%s: %d %s utterances have a null %r label and are left out", shards_dir, null_labels, split,
                       label_source)
    counts = {c: 0 for c in classes}
    for cls in dominant.values():
        counts[cls] += 1
    minority = minority_classes(counts, ratio)
    minority_set = set(minority)
    wanted = {uid for uid, cls in dominant.items() if cls in minority_set}

    # Pass 2: features and audio of the minority-class utterances.
    out_dir.mkdir(parents=True, exist_ok=True)
    extractor = FeatureExtractor(config, encoder, sample_rate)
    pool_ids: list[str] = []
    pool_meta: list[dict[str, Any]] = []
    rows: list[dict[str, np.ndarray]] = []

    def clips() -> Iterator[np.ndarray]:
        for sample in tqdm(
            _dataset(urls, json_only=False), total=expected, desc=f"{split}: pool", disable=not progress
        ):
            meta = json.loads(sample["json"])
            if meta["id"] not in wanted:
                continue
            audio, sr = _decode_int16(sample["flac"], meta["id"])
            if sr != sample_rate:
                raise ValueError(f"utterance {meta['id']!r} is at {sr} Hz, the card says {sample_rate} Hz")
            rows.append(extractor(audio.astype(np.float32) / 32768.0, meta.get("transcript") or ""))
            pool_ids.append(meta["id"])
            pool_meta.append(meta)
            yield audio

    _write_pool(out_dir, clips())
    pool_classes = [dominant[uid] for uid in pool_ids]
    nearest = nearest_neighbours(feature_matrix(rows, config.balance_blocks), pool_classes, k) if rows else []
    index = {
        "version": INDEX_VERSION,
        "split": split,
        "label_source": label_source,
        "classes": classes,
        "ratio": ratio,
        "k": k,
        "sample_rate": sample_rate,
        "train_size": len(dominant),
        "shards": names,
        "counts": counts,
        "minority_classes": minority,
        "deficit": dime_amounts(counts, ratio),
        "features": {**asdict(config), "encoder": None if encoder is None else _callable_name(encoder)},
        "dominant": dominant,
        "neighbours": {uid: [pool_ids[q] for q in nn] for uid, nn in zip(pool_ids, nearest, strict=True)},
        "pool": {
            "audio": POOL_AUDIO_FILE,
            "offsets": POOL_OFFSETS_FILE,
            "dtype": "int16",
            "ids": pool_ids,
            "classes": pool_classes,
            "meta": pool_meta,
        },
    }
    tmp = out_dir / (INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps(index, ensure_ascii=False))
    tmp.replace(out_dir / INDEX_FILE)
    return out_dir


def _callable_name(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__name__)}"
