"""Shards in object storage and on web servers, through the real CLI: the same numbers as from a local directory.

Real servers on 127.0.0.1 (``tests/object_store.py``): ``moto_server`` (S3), ``python -m http.server``, and a stdlib
server that cuts its responses. A cut connection is resumed; a server that keeps failing stops the pass naming the
shard; a shard replaced in the store is named by ``verify_shards``; the local shard cache serves a second pass with
no remote byte; two DDP processes train from S3.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_fixtures import DEMO_SHARDS, TINY_DEMO
from object_store import FlakyServer, S3Store, http_server, s3_store  # noqa: F401 (the s3_store fixture)

from ser_lightning.cli.stats import main as stats_main
from ser_lightning.cli.train import main
from ser_lightning.data.shards import storage
from ser_lightning.data.shards.card import read_card
from ser_lightning.data.shards.storage import ShardReadError
from ser_lightning.data.shards.verify import verify_shards
from ser_lightning.data.shards.writer import refresh_card

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TEST_SHARD = DEMO_SHARDS / "test-000000.tar"
SAME = ("test/js", "test/bc", "test/r2", "test/acc", "test/f1", "test/bin1/js", "test/bin3/js")


def _test(tmp_path: Path, shards: str | Path, name: str, *extra: str) -> dict:
    """``train.py test`` of the tiny demo model (seeded: the same weights every run) over the whole test split."""
    main([
        "test", *TINY_DEMO, f"--data.shards={shards}", "--trainer.limit_test_batches=1.0", "--bootstrap_samples=0",
        f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.logger.init_args.name={name}",
        "--trainer.logger.init_args.version=v", *extra,
    ])  # fmt: skip
    return json.loads((tmp_path / name / "v" / "test_metrics.json").read_text())


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _test(tmp_path_factory.mktemp("local"), DEMO_SHARDS, "local")


@pytest.fixture(scope="module")
def demo_in_s3(s3_store: S3Store) -> str:  # noqa: F811
    return s3_store.upload(DEMO_SHARDS, "demo")


def _assert_same(metrics: dict, local: dict) -> None:
    assert metrics["complete"] is True
    assert metrics["scored"] == local["scored"] == 144
    for key in SAME:
        assert metrics[key] == pytest.approx(local[key], abs=1e-6), key


def test_a_test_pass_from_s3_and_from_a_web_server_equals_the_local_one(tmp_path, local, demo_in_s3):
    from_s3 = _test(tmp_path, demo_in_s3, "s3")
    _assert_same(from_s3, local)
    with http_server(DEMO_SHARDS) as url:
        from_http = _test(tmp_path, url, "http")
    _assert_same(from_http, local)
    size = TEST_SHARD.stat().st_size
    assert local["evaluation"]["bytes_read"] == from_s3["evaluation"]["bytes_read"] == size  # one shard, read once
    assert from_http["evaluation"]["bytes_read"] == size


def test_a_connection_cut_mid_shard_is_resumed(tmp_path, local):
    with FlakyServer(DEMO_SHARDS, drops=1, cut_after=300_000) as server:
        metrics = _test(tmp_path, server.url, "flaky")
    assert server.cut == 1
    _assert_same(metrics, local)


def test_a_server_that_keeps_failing_stops_the_pass_naming_the_shard(tmp_path):
    with FlakyServer(DEMO_SHARDS, drops=None, cut_after=100_000) as server, pytest.raises(ShardReadError) as err:
        _test(tmp_path, server.url, "broken", "--data.read_retries=2")
    assert "test-000000.tar" in str(err.value)
    assert "after 2 tries" in str(err.value)
    assert not (tmp_path / "broken" / "v" / "test_metrics.json").exists()  # no metrics of a partial pass


def test_the_shard_cache_serves_a_second_pass_without_remote_bytes(tmp_path, local, demo_in_s3):
    cache = tmp_path / "cache"
    first = _test(tmp_path, demo_in_s3, "cached1", f"--data.shard_cache={cache}")
    second = _test(tmp_path, demo_in_s3, "cached2", f"--data.shard_cache={cache}")
    _assert_same(first, local)
    _assert_same(second, local)
    assert first["evaluation"]["bytes_read"] == TEST_SHARD.stat().st_size
    assert second["evaluation"]["bytes_read"] == 0  # read from the cache, not the store
    (copy,) = [p for p in cache.rglob("*.tar")]
    assert copy.read_bytes() == TEST_SHARD.read_bytes()


def test_cards_stats_verification_and_refresh_work_on_a_remote_prefix(tmp_path, s3_store, capsys):  # noqa: F811
    local_dir = tmp_path / "demo"
    shutil.copytree(DEMO_SHARDS, local_dir)
    url = s3_store.upload(local_dir, "verify")
    assert read_card(url) == read_card(local_dir)
    assert stats_main([url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == read_card(local_dir)["stats"]
    assert verify_shards(url, "test") == []
    refresh_card(url)  # rebuilt from the remote shards, uploaded in place
    assert read_card(url) == read_card(local_dir)
    s3_store.put("verify/test-000000.tar", (DEMO_SHARDS / "val-000000.tar").read_bytes())  # another shard's bytes
    (problem,) = verify_shards(url, "test")
    assert problem.startswith(f"{url}/test-000000.tar: ")
    assert "SHA-256 differs" in problem
    s3_store.put("verify/test-000000.tar", TEST_SHARD.read_bytes()[:190_000])  # cut inside a flac member
    (problem,) = verify_shards(url, "test")
    assert "cut inside member" in problem
    assert storage.exists(f"{url}/card.json")
    assert not storage.exists(f"{url}/nothing.tar")


def test_two_ddp_processes_train_a_few_steps_from_s3(tmp_path, demo_in_s3, s3_store):  # noqa: F811
    args = [
        sys.executable, "train.py", "fit", *TINY_DEMO, f"--data.shards={demo_in_s3}", "--trainer.devices=2",
        "--trainer.strategy=ddp", "--trainer.limit_val_batches=1.0", "--test_after_fit=true",
        "--trainer.limit_test_batches=1.0", "--bootstrap_samples=0", f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--trainer.logger.init_args.name=ddp", "--trainer.logger.init_args.version=v",
    ]  # fmt: skip
    env = {**os.environ, **s3_store.env, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "v" / "test_metrics.json").read_text())
    assert metrics["complete"] is True
    assert metrics["scored"] == 144  # every test sample once over the two ranks
    assert 0 < metrics["test/js"] < 1
    assert (tmp_path / "ddp" / "v" / "checkpoints" / "last.ckpt").is_file()
    assert "Traceback" not in done.stderr
