"""Shard directories for the data tests, from ``tests/shard_fixtures.py`` (written by ``write_shards``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from shard_fixtures import write_test_shards


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
