"""Locations of shards (paths and URLs), retried remote reads, and the size-capped shard cache."""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import pytest
from object_store import FlakyServer

from ser_lightning.data.shards import storage
from ser_lightning.data.shards.cache import ShardCache
from ser_lightning.data.shards.storage import ByteCounter, RetryingReader, RetryPolicy, ShardReadError

FAST = RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.02)


def test_paths_stay_paths_and_urls_stay_urls():
    assert storage.is_remote("s3://bucket/prefix")
    assert storage.is_remote("https://host/x")
    assert not storage.is_remote("shards/demo")
    assert not storage.is_remote("file:///tmp/x")
    assert storage.as_location("file:///tmp/x") == Path("/tmp/x")
    assert storage.join("s3://bucket/prefix/", "card.json") == "s3://bucket/prefix/card.json"
    assert storage.join("shards/demo", "card.json") == Path("shards/demo/card.json")
    assert storage.basename("gs://b/p/train-000001.tar") == "train-000001.tar"
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    assert FAST.delay(1) <= FAST.delay(2) * 1.2


def test_a_local_file_is_read_whole_and_counted(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(os.urandom(10_000))
    counter = ByteCounter()
    with storage.open_binary(path, counter=counter) as f:
        assert f.read() == path.read_bytes()
    assert counter.drain() == 10_000
    assert counter.drain() == 0
    storage.write_bytes(tmp_path / "y.bin", b"abc")
    assert (tmp_path / "y.bin").read_bytes() == b"abc"
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_cut_connection_resumes_where_it_stopped(tmp_path):
    data = os.urandom(3 << 20)
    (tmp_path / "shard.tar").write_bytes(data)
    with FlakyServer(tmp_path, drops=2, cut_after=1 << 20) as server:
        counter = ByteCounter()
        reader = RetryingReader(f"{server.url}/shard.tar", FAST, counter)
        with io.BufferedReader(reader) as f:
            assert f.read() == data  # every byte once, in order, although two responses were cut
    assert server.cut == 2
    assert reader.retries == 2
    assert counter.bytes == len(data)


def test_a_server_that_keeps_cutting_fails_naming_the_file_and_the_offset(tmp_path):
    (tmp_path / "shard.tar").write_bytes(os.urandom(1 << 20))
    with FlakyServer(tmp_path, drops=None, cut_after=100_000) as server:
        url = f"{server.url}/shard.tar"
        with pytest.raises(ShardReadError, match=r"shard\.tar: read failed at byte \d+ after 3 tries") as err:
            storage.read_bytes(url, FAST)
    assert err.value.location == url
    assert err.value.offset >= 0


def test_a_missing_remote_file_is_not_retried(tmp_path):
    with FlakyServer(tmp_path, drops=0) as server:
        started = time.monotonic()
        assert not storage.exists(f"{server.url}/nothing.tar")
        with pytest.raises(FileNotFoundError):
            storage.read_bytes(f"{server.url}/nothing.tar", RetryPolicy(attempts=5, first_delay=5))
        assert time.monotonic() - started < 4  # no back-off spent on a file that is not there


def _stream(data: bytes) -> io.BufferedReader:
    return io.BufferedReader(io.BytesIO(data))


def test_the_cache_keeps_complete_checked_copies_and_evicts_the_least_recently_used(tmp_path):
    cache = ShardCache(tmp_path / "cache", max_bytes=2500)
    blobs = {f"s3://b/p/{i}.tar": bytes([i]) * 1000 for i in range(3)}
    for url, data in blobs.items():
        with cache.reader(url, _stream(data), len(data), hashlib.sha256(data).hexdigest()) as f:
            assert f.read() == data
        time.sleep(0.01)  # distinct use times
    assert cache.get("s3://b/p/0.tar") is None  # the oldest went when the third arrived (3000 > 2500)
    assert cache.get("s3://b/p/1.tar").read_bytes() == blobs["s3://b/p/1.tar"]
    assert cache.get("s3://b/p/2.tar") is not None


def test_the_cache_keeps_nothing_of_a_partial_read_or_of_bytes_that_differ_from_the_card(tmp_path):
    cache = ShardCache(tmp_path, max_bytes=10 << 20)
    data = b"x" * (3 << 20)  # past the reader's 1 MB read-ahead
    with cache.reader("s3://b/partial.tar", _stream(data), len(data), None) as f:
        f.read(10)  # stopped early (an epoch cut)
    with cache.reader("s3://b/changed.tar", _stream(data), len(data), "0" * 64) as f:
        f.read()
    assert cache.get("s3://b/partial.tar") is None
    assert cache.get("s3://b/changed.tar") is None
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no temporary file left behind
    with pytest.raises(ValueError, match="size cap"):
        ShardCache(tmp_path, 0)
