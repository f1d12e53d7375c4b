"""Checking shard files against the card, in one streamed read each: sample count, intact tar, SHA-256.

Works on local files and remote ones alike (:mod:`ser_lightning.data.shards.storage`): a shard is read once from
start to end, the tar headers parsed on the way, the bytes hashed, and the end-of-archive blocks checked at the end.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from typing import Any

from ser_lightning.data.shards import storage
from ser_lightning.data.shards.card import read_card, shard_paths
from ser_lightning.data.shards.storage import Location, ShardReadError

_BLOCK = 512  # tar block size; a complete archive ends with two zero blocks after its last member
_TAIL = 1 << 20  # bytes kept from the end of the read (the end-of-archive blocks sit in a tar's last record)


class _Tap(io.RawIOBase):
    """A stream passed through: its bytes hashed, counted, and the last :data:`_TAIL` of them kept."""

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self.stream = stream
        self.digest = hashlib.sha256()
        self.total = 0
        self.tail = bytearray()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        self.digest.update(data)
        self.total += len(data)
        self.tail += data
        del self.tail[: max(0, len(self.tail) - _TAIL)]
        return len(data)

    def at(self, offset: int, count: int) -> bytes:
        """Up to ``count`` bytes from ``offset`` on, if they are still in the kept tail (else ``b""``)."""
        start = self.total - len(self.tail)
        return bytes(self.tail[offset - start : offset - start + count]) if offset >= start else b""


def inspect_shard(path: Location) -> tuple[int, str | None, str]:
    """``(samples, problem, sha256)`` of one shard read once: keys read, why it is damaged (``None``: intact), hash.

    A cut at a member boundary leaves a readable tar without the end-of-archive blocks; a cut inside a member leaves
    a member that runs past the end of the file. A remote file that cannot be read raises
    :class:`~ser_lightning.data.shards.storage.ShardReadError`.
    """
    size = storage.size(path)
    keys: set[str] = set()
    end = 0
    problem: str | None = None
    samples: int | None = None  # set where a cut member ends the count
    with storage.open_binary(path) as raw:
        tap = _Tap(raw)
        try:
            with tarfile.open(fileobj=io.BufferedReader(tap), mode="r|") as tar:
                for member in tar:
                    end = member.offset_data + -(-member.size // _BLOCK) * _BLOCK
                    key = member.name.split("/")[-1].split(".", 1)[0]
                    if end > size:
                        samples = len(keys - {key})
                        problem = f"cut inside member {member.name} after {samples} complete samples"
                        break
                    if member.isfile():
                        keys.add(key)
        except ShardReadError:
            raise
        except (tarfile.TarError, EOFError) as err:
            problem = f"unreadable tar after {len(keys)} samples ({type(err).__name__}: {err})"
        while tap.read(1 << 20):  # the rest of the file: hashed, and the end-of-archive blocks kept
            pass
    samples = len(keys) if samples is None else samples
    if problem is None:
        tail = tap.at(end, 2 * _BLOCK)
        if len(tail) < 2 * _BLOCK or any(tail):
            problem = f"no end-of-archive marker after {samples} samples (cut at a member boundary?)"
    return samples, problem, tap.digest.hexdigest()


def scan_shard(path: Location) -> tuple[int, str | None]:
    """``(samples, problem)`` of one shard (see :func:`inspect_shard`)."""
    samples, problem, _ = inspect_shard(path)
    return samples, problem


def file_sha256(path: Location) -> str:
    """Hex SHA-256 of a file's bytes (the card's ``shard_info[name]["sha256"]``)."""
    digest = hashlib.sha256()
    with storage.open_binary(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_shard(path: Location) -> dict[str, Any]:
    """The card's ``shard_info`` entry of a shard file: ``{"samples": int, "sha256": str}``."""
    samples, problem, sha256 = inspect_shard(path)
    if problem is not None:
        raise ValueError(f"{path}: {problem}")
    return {"samples": samples, "sha256": sha256}


def verify_shards(shard_dir: Location, split: str, card: dict[str, Any] | None = None) -> list[str]:
    """Re-read every shard of a split and say what is wrong with each damaged one (empty list: none is).

    Each message names the shard file: missing, unreadable, cut inside a member, cut at a member boundary (no
    end-of-archive marker), a sample count or SHA-256 other than the card's ``shard_info`` (cards written
    before ``shard_info`` existed are checked for the first three only). Remote shards are streamed, once each.
    """
    card = read_card(shard_dir) if card is None else card
    info = card.get("shard_info") or {}
    problems = []
    for path in shard_paths(shard_dir, split, card):
        expected = info.get(storage.basename(path), {})
        if not storage.exists(path):
            problems.append(f"{path}: missing")
            continue
        try:
            samples, problem, sha256 = inspect_shard(path)
        except ShardReadError as err:
            problems.append(f"{path}: unreadable ({err})")
            continue
        if problem is None and "samples" in expected and samples != expected["samples"]:
            problem = f"holds {samples} samples, the card says {expected['samples']}"
        if problem is None and "sha256" in expected and sha256 != expected["sha256"]:
            problem = "SHA-256 differs from the card's (changed after preparation)"
        if problem is not None:
            problems.append(f"{path}: {problem}")
    return problems

