"""Tiny WebDataset shard directories in the format of docs/shard-format.md, written with webdataset + soundfile.

Stands in for ``ser_lightning.data.shards.write_shards`` until that exists; switch to it then.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from ser_lightning.labels import entropy, votes_to_distribution
from ser_lightning.stats import vote_statistics

CLASSES = ["Anger", "Happiness", "Neutral", "Sadness"]
RATE = 16000


def tone(seconds: float, freq: float = 440.0, rate: int = RATE) -> np.ndarray:
    """A sine clip in [-0.5, 0.5], float32."""
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.5 * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def flac_bytes(audio: np.ndarray, rate: int = RATE) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def write_test_shards(
    out_dir: Path,
    shard_sizes: dict[str, Sequence[int]],
    seed: int = 0,
    min_seconds: float = 0.2,
    max_seconds: float = 1.5,
    corrupt: Sequence[str] = (),
) -> Path:
    """Write ``{split}-NNNNNN.tar`` shards with ``shard_sizes[split][k]`` samples in shard k, plus card.json.

    Ids look like ``{split}.{n:04d}`` (with a dot, so ``__key__`` differs from ``id``); ids in ``corrupt``
    get FLAC bytes that do not decode.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    card = {
        "classes": CLASSES,
        "sources": ["primary"],
        "rejected": 0,
        "sample_rate": RATE,
        "num_samples": {},
        "shards": {},
        "stats": {},
    }
    all_votes = []
    for split, sizes in shard_sizes.items():
        names, votes_split, n = [], [], 0
        for k, size in enumerate(sizes):
            name = f"{split}-{k:06d}.tar"
            names.append(name)
            with wds.TarWriter(str(out_dir / name)) as sink:
                for _ in range(size):
                    uid = f"{split}.{n:04d}"
                    n += 1
                    seconds = float(rng.uniform(min_seconds, max_seconds))
                    votes = rng.multinomial(5, rng.dirichlet(np.ones(len(CLASSES)))).astype(float)
                    votes_split.append(votes)
                    dist = votes_to_distribution(votes)
                    meta = {
                        "id": uid,
                        "corpus": "synthetic",
                        "split": split,
                        "transcript": f"utterance {uid} says hello",
                        "speaker": f"spk{n % 3}",
                        "duration": round(seconds, 4),
                        "classes": CLASSES,
                        "votes": {"primary": votes.tolist()},
                        "distribution": {"primary": dist.tolist()},
                        "entropy": {"primary": float(entropy(dist))},
                        "vad": None if n % 4 == 0 else rng.uniform(1, 5, size=3).round(3).tolist(),
                        "vad_scale": None if n % 4 == 0 else [1, 5],
                    }
                    audio = flac_bytes(tone(seconds, freq=200 + 10 * (n % 50)))
                    if uid in corrupt:
                        audio = b"not a flac stream" * 8
                    sink.write(
                        {"__key__": uid.replace(".", "_"), "flac": audio, "json": json.dumps(meta).encode("utf-8")}
                    )
        card["shards"][split] = names
        card["num_samples"][split] = n
        card["stats"][split] = vote_statistics(np.array(votes_split).reshape(-1, len(CLASSES)), CLASSES)
        all_votes += votes_split
    card["stats"]["all"] = vote_statistics(np.array(all_votes).reshape(-1, len(CLASSES)), CLASSES)
    (out_dir / "card.json").write_text(json.dumps(card, indent=1), encoding="utf-8")
    return out_dir


@pytest.fixture
def make_shards(tmp_path: Path) -> Callable[..., Path]:
    """``make_shards(shard_sizes, **kw)`` writes a shard directory under ``tmp_path`` and returns it."""
    counter = iter(range(1000))

    def make(shard_sizes: dict[str, Sequence[int]], **kw) -> Path:
        return write_test_shards(tmp_path / f"shards{next(counter)}", shard_sizes, **kw)

    return make


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus with uneven train shards (3), one val shard and two test shards."""
    return write_test_shards(tmp_path_factory.mktemp("shards"), {"train": [11, 5, 8], "val": [13], "test": [6, 4]})
