"""A local, size-capped cache of remote shard files, for repeated evaluation and multi-epoch training.

A remote shard read from start to end through :meth:`ShardCache.reader` is written beside the read into a
temporary file in the cache directory; when the read reaches the end and the bytes' SHA-256 equals the card's
(when the card records one), the file is renamed into place (atomic: a reader on another worker sees either no
file or a whole one). Later opens of that shard read the local copy. When the files exceed ``max_bytes``, the least
recently used ones are deleted. A read that stops early (an epoch cut, an error) leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from ser_lightning.data.shards.storage import basename

log = logging.getLogger(__name__)


class ShardCache:
    """Remote shards kept in ``directory``, at most ``max_bytes`` of them (least recently used evicted).

    Args:
        directory: the cache directory (created on first write); several runs may share it.
        max_bytes: the cap on the cached files' total size.
    """

    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"the shard cache needs a positive size cap, got {max_bytes} bytes")
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)

    def path(self, url: str) -> Path:
        """Where the copy of ``url`` lives: a folder per URL hash (two stores may hold equal names)."""
        return self.directory / hashlib.sha256(url.encode()).hexdigest()[:16] / basename(url)

    def get(self, url: str) -> Path | None:
        """The cached copy of ``url`` (its use time refreshed), or ``None``."""
        path = self.path(url)
        if not path.is_file():
            return None
        os.utime(path)
        return path

    def reader(self, url: str, stream: BinaryIO, size: int, sha256: str | None) -> BinaryIO:
        """``stream`` (the remote file, ``size`` bytes) read through a copy into the cache (see the module doc)."""
        return io.BufferedReader(_CachingReader(self, url, stream, size, sha256), buffer_size=1 << 20)  # type: ignore[return-value]

    def commit(self, tmp: Path, url: str) -> None:
        """Move a complete, checked copy into place and evict down to the cap (never the file just added)."""
        path = self.path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, path)
        self.evict(keep=path)

    def evict(self, keep: Path | None = None) -> None:
        """Delete the least recently used copies until the cache holds at most ``max_bytes``."""
        files = []
        for path in self.directory.glob("*/*"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # removed by another process meanwhile
                continue
            if path.is_file() and not path.name.startswith("."):
                files.append((stat.st_mtime, stat.st_size, path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            total -= size
            log.info("shard cache %s: evicted %s (%d bytes)", self.directory, path.name, size)


class _CachingReader(io.RawIOBase):
    """Reads a remote stream and copies it into a temporary file of the cache; commits a complete, checked copy."""

    def __init__(self, cache: ShardCache, url: str, stream: BinaryIO, size: int, sha256: str | None) -> None:
        super().__init__()
        self.cache, self.url, self.stream, self.size, self.sha256 = cache, url, stream, size, sha256
        cache.directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=cache.directory, prefix=f".{basename(url)}.", suffix=".part")
        self.tmp = Path(name)
        self.copy: Any = os.fdopen(fd, "wb")
        self.digest = hashlib.sha256()
        self.written = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        if data and self.copy is not None:
            self.copy.write(data)
            self.digest.update(data)
            self.written += len(data)
        return len(data)

    def close(self) -> None:
        if self.copy is not None:
            self.copy.close()
            self.copy = None
            complete = self.written == self.size
            checked = self.sha256 is None or self.digest.hexdigest() == self.sha256
            if complete and checked:
                self.cache.commit(self.tmp, self.url)
            else:
                if complete:
                    log.warning("%s: its SHA-256 differs from the card's; not cached", self.url)
                self.tmp.unlink(missing_ok=True)
            self.stream.close()
        super().close()
