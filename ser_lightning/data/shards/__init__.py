"""Shard directories: writing them (:mod:`.writer`), and their card and sample JSON (:mod:`.card`).

The names below are the package's API (what ``ser-prepare``, ``ser-annotate merge`` and the tests use).
"""

from ser_lightning.data.shards.card import iter_shard_meta, read_card, rejection_summary, shard_dir_statistics
from ser_lightning.data.shards.writer import SHARD_PATTERN, check_out_dir, refresh_card, sample_key, write_shards

__all__ = [
    "SHARD_PATTERN",
    "check_out_dir",
    "iter_shard_meta",
    "read_card",
    "refresh_card",
    "rejection_summary",
    "sample_key",
    "shard_dir_statistics",
    "write_shards",
]
