"""A ``train.py test`` pass on ``synthetic`` labels: samples without a synthetic label are skipped with a reason.

shards/demo is merged with a store (written by plain SQL) that leaves every 10th utterance without a valid
answer; the pass must still be complete: scored + skipped = the card's count, the skips named by key.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from ser_lightning.annotate.merge import merge_store
from ser_lightning.cli.train import main
from ser_lightning.data.shards import iter_shard_meta

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "shards" / "demo"
SCHEMA = """CREATE TABLE annotations (id TEXT, backend TEXT, model TEXT, mode TEXT, k INTEGER, persona INTEGER,
    temperature REAL, label TEXT, probabilities TEXT, raw TEXT, reason TEXT, created TEXT,
    UNIQUE (id, backend, model, mode, k))"""


def test_a_test_pass_on_synthetic_labels_counts_null_samples_as_skipped(tmp_path):
    classes = json.loads((DEMO / "card.json").read_text())["classes"]
    rows, unlabelled = [], set()
    for n, meta in enumerate(iter_shard_meta(DEMO)):
        if n % 10 == 0:  # no valid answer: one invalid row, or none at all
            unlabelled.add(meta["id"])
            rows += [(meta["id"], 0, None)] if n % 20 == 0 else []
            continue
        rows += [(meta["id"], k, classes[(n + k) % len(classes)]) for k in range(3)]
    store = tmp_path / "store.sqlite"
    with sqlite3.connect(store) as conn:
        conn.execute(SCHEMA)
        conn.executemany(
            "INSERT INTO annotations VALUES (?, 'gemini', 'm', 'sample', ?, 0, 0.5, ?, NULL, 'raw', NULL, 'now')", rows
        )
    conn.close()
    card = merge_store(store, DEMO, tmp_path / "merged")
    nulls = card["null_labels"]["synthetic"]["test"]
    test_ids = {m["id"] for m in iter_shard_meta(tmp_path / "merged", "test")}
    assert nulls == len(test_ids & unlabelled) > 0
    main([
        "test",
        "--config", str(ROOT / "configs" / "demo.yaml"),
        "--config", str(ROOT / "configs" / "debug" / "tiny.yaml"),
        "--data.shards", str(tmp_path / "merged"),
        "--data.label_source", "synthetic",
        "--data.num_workers", "0",
        "--data.max_batch_size", "16",
        "--trainer.limit_test_batches", "1.0",
        "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--trainer.logger.init_args.name", "eval",
        "--trainer.logger.init_args.version", "v",
        "--trainer.default_root_dir", str(tmp_path),
    ])  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "v" / "test_metrics.json").read_text())
    assert metrics["complete"] is True
    assert metrics["expected"] == card["num_samples"]["test"]
    assert metrics["skipped"] == nulls
    assert metrics["scored"] == card["num_samples"]["test"] - nulls
    skipped = metrics["evaluation"]["skipped_samples"]
    assert {s["key"] for s in skipped} == {uid.replace(".", "_") for uid in test_ids & unlabelled}
    assert all("'synthetic' is null" in s["reason"] for s in skipped)
