"""Tar shards into webdataset samples, from a local folder or a remote store, with retries, cache and byte counts.

Webdataset's own ``tarfile_to_samples`` opens URLs with ``gopen`` (``curl`` for http, nothing for ``s3://``) and
turns every error into a handler call, so a shard whose connection dropped would be skipped like a damaged one and
an epoch or an evaluation silently shorter. :func:`tar_samples` is the same stage over
:mod:`ser_lightning.data.shards.storage`: reads are retried and resumed, a shard that stays unreadable ends the run
with :class:`~ser_lightning.data.shards.storage.ShardReadError` naming it (never a skip), a damaged tar is still a
counted skip, remote shards may be copied into a :class:`~ser_lightning.data.shards.cache.ShardCache`, and every
byte read from the shards' location is counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from webdataset import tariterators

from ser_lightning.data.shards import storage
from ser_lightning.data.shards.cache import ShardCache
from ser_lightning.data.shards.storage import ByteCounter, RetryPolicy, ShardReadError


@dataclass(frozen=True)
class ShardAccess:
    """How a stream reads its shards (picklable: it travels to the loader workers).

    Args:
        retry: the retries of remote reads.
        cache_dir: local directory of the shard cache (``None``: no cache); only remote shards are cached.
        cache_max_bytes: the cache's size cap.
        checksums: the card's SHA-256 of each shard, by URL: a cached copy must match it.
    """

    retry: RetryPolicy = storage.DEFAULT_POLICY
    cache_dir: str | None = None
    cache_max_bytes: int = 0
    checksums: dict[str, str] = field(default_factory=dict)

    def open(self, url: str, counter: ByteCounter | None = None) -> BinaryIO:
        """A binary stream of the shard: the cached copy, a local file, or the remote file (copied into the cache)."""
        if self.cache_dir is None or not storage.is_remote(url):
            return storage.open_binary(url, self.retry, counter)
        cache = ShardCache(self.cache_dir, self.cache_max_bytes)
        cached = cache.get(url)
        if cached is not None:
            return storage.open_binary(cached)
        stream = storage.open_binary(url, self.retry, counter)
        return cache.reader(url, stream, storage.size(url), self.checksums.get(url))


def tar_samples(
    src: Iterable[dict[str, Any]],
    access: ShardAccess,
    counter: ByteCounter | None,
    handler: Callable[[BaseException], bool],
) -> Iterator[dict[str, Any]]:
    """``{"url"}`` shard records -> webdataset samples (as ``tarfile_to_samples``), read through ``access``.

    A :class:`ShardReadError` is raised, never handed to ``handler``: a shard that cannot be read is a failure.
    """
    return tariterators.group_by_keys(_tar_files(src, access, counter, handler), handler=handler)


def _tar_files(
    src: Iterable[dict[str, Any]],
    access: ShardAccess,
    counter: ByteCounter | None,
    handler: Callable[[BaseException], bool],
) -> Iterator[dict[str, Any]]:
    """Each shard's files, then ``{}`` (webdataset's end-of-shard marker, so samples never mix across shards)."""
    for source in src:
        url = source["url"]
        try:
            stream = access.open(url, counter)
        except ShardReadError:
            raise
        except Exception as exn:  # a missing or unreadable shard: the handler counts it
            exn.args = (*exn.args, url)
            if handler(exn):
                continue
            return
        try:
            for sample in tariterators.tar_file_iterator(stream, handler=handler):
                sample["__url__"] = url
                yield sample
            stream.read()  # the end-of-archive padding: a complete read (what a cache copy needs)
            yield {}
        except ShardReadError:
            raise
        except Exception as exn:
            exn.args = (*exn.args, url)
            if not handler(exn):
                return
        finally:
            stream.close()
