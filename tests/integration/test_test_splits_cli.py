"""Several test splits from one ``test`` run (paper 004 reports Test1 and Test2): one pass per split, prefixed metrics.

The demo shards have one test split; a card written here adds ``test2`` (the demo's validation shard), so its
metrics can be compared with a run that tests that shard alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_fixtures import DEMO_SHARDS, TINY_DEMO

from ser_lightning.cli.train import main

pytestmark = pytest.mark.integration


def _two_test_splits(tmp_path: Path) -> Path:
    out = tmp_path / "shards"
    out.mkdir()
    card = json.loads((DEMO_SHARDS / "card.json").read_text())
    for name in [n for names in card["shards"].values() for n in names]:
        (out / name).symlink_to(DEMO_SHARDS / name)
    card["shards"]["test2"] = list(card["shards"]["val"])
    card["num_samples"]["test2"] = card["num_samples"]["val"]
    (out / "card.json").write_text(json.dumps(card))
    return out


def _run(tmp_path: Path, *extra: str) -> None:
    main([*extra[:1], *TINY_DEMO, "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
          "--trainer.limit_test_batches", "1.0", "--bootstrap_samples", "50", *extra[1:]])  # fmt: skip


def test_one_test_run_scores_each_split_under_its_prefix(tmp_path):
    shards = _two_test_splits(tmp_path)
    _run(tmp_path, "fit", "--data.shards", str(shards), "--data.test_split", "[test, test2]",
         "--test_after_fit", "true", "--trainer.logger.init_args.version", "both")  # fmt: skip
    run = tmp_path / "runs" / "demo" / "both"
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["test_splits"] == ["test", "test2"]
    assert metrics["complete"] is True
    assert metrics["expected"] == metrics["scored"] == 288
    for split in ("test", "test2"):
        entry = metrics["splits"][split]
        assert entry["complete"] is True
        assert entry["scored"] == 144
        assert entry["evaluation"]["split"] == split
        assert metrics[f"test/{split}/jsd_nats"] == pytest.approx(metrics[f"test/{split}/js"] * 0.6931471805599453)
        assert len(metrics[f"test/{split}/js_ci95"]) == 2
        assert f"test/{split}/ece" in metrics
        assert len((run / f"test_predictions_{split}.jsonl").read_text().splitlines()) == 144
    assert "test/js" not in metrics
    # the second split's numbers are those of a run testing that shard alone with the same checkpoint
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    _run(tmp_path, "test", "--data.shards", str(shards), "--data.test_split", "test2", "--ckpt_path", str(best))
    alone = json.loads(next((run).glob("test-*/test_metrics.json")).read_text())
    assert alone["test/js"] == pytest.approx(metrics["test/test2/js"], rel=1e-6)
    assert alone["test/bin2/f1"] == pytest.approx(metrics["test/test2/bin2/f1"], rel=1e-6, nan_ok=True)
