"""Complete evaluation or a loud stop: a damaged test shard through the real ``train.py test``.

Each test copies ``shards/demo`` into ``tmp_path`` and damages the copy's test shard (never the original):
cut at a tar member boundary (an interrupted copy), cut inside a member, or one sample's audio replaced by
garbage. The references are independent of the module's accounting: the card's count, the tar members, and
scipy's Jensen-Shannon distance on the sample JSON.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from cli_fixtures import TINY_DEMO
from scipy.spatial.distance import jensenshannon

from ser_lightning.cli.train import main

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "shards" / "demo"
TEST_SHARD = "test-000000.tar"
KEPT = 100  # samples left in front of a cut


def _args(shards: Path, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "test",
        *TINY_DEMO,
        "--data.shards",
        str(shards),
        "--data.num_workers",
        "0",
        "--data.max_batch_size",
        "16",
        "--data.max_batch_seconds",
        "64",
        "--trainer.limit_test_batches",
        "1.0",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
        "--trainer.logger.init_args.name",
        "eval",
        "--trainer.logger.init_args.version",
        "v",
        "--trainer.default_root_dir",
        str(tmp_path),
        *extra,
    ]


def _metrics(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "eval" / "v" / "test_metrics.json").read_text())


def _members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """A private copy of shards/demo."""
    out = tmp_path / "shards"
    shutil.copytree(DEMO, out)
    return out


def _cut(shard: Path, size: int) -> None:
    with shard.open("r+b") as f:
        f.truncate(size)


def _cut_at_boundary(shards: Path) -> None:
    """Keep the first KEPT samples (2 members each) and nothing after: no end-of-archive blocks."""
    shard = shards / TEST_SHARD
    _cut(shard, _members(shard)[2 * KEPT].offset)


def _uniform_js(metas: list[dict]) -> float:
    """Mean JS (bits) of the uniform predictor, by scipy (the distance squared is the divergence)."""
    target = np.array([m["distribution"]["primary"] for m in metas])
    uniform = np.full(target.shape[1], 1.0 / target.shape[1])
    return float(np.mean([jensenshannon(uniform, t, base=2) ** 2 for t in target]))


def _test_metas(shard: Path) -> list[dict]:
    with tarfile.open(shard) as tar:
        return [json.load(tar.extractfile(m)) for m in tar.getmembers() if m.name.endswith(".json")]


def test_boundary_cut_stops_test_with_split_counts_and_shard(shards, tmp_path):
    _cut_at_boundary(shards)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "train.py"), *_args(shards, tmp_path)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out[-3000:]
    assert "incomplete test pass over split 'test'" in out
    assert f"the card lists 144 samples, {KEPT} were scored and 0 skipped" in out
    assert f"{TEST_SHARD}: no end-of-archive marker after {KEPT} samples" in out
    assert not (tmp_path / "eval" / "v" / "test_metrics.json").exists()


def test_boundary_cut_with_allow_partial_eval_reports_incomplete_counts(shards, tmp_path):
    intact = _test_metas(shards / TEST_SHARD)
    _cut_at_boundary(shards)
    main(_args(shards, tmp_path, "--data.allow_partial_eval", "true"))
    metrics = _metrics(tmp_path)
    assert metrics["complete"] is False
    assert (metrics["expected"], metrics["scored"], metrics["skipped"]) == (144, KEPT, 0)
    assert metrics["test/count"] == KEPT
    assert any(TEST_SHARD in d for d in metrics["evaluation"]["damaged_shards"])
    # the reference predictors are scored on exactly the scored samples (the first KEPT), not the card's 144
    assert metrics["reference"]["uniform_js"] == pytest.approx(_uniform_js(intact[:KEPT]), abs=1e-9)
    assert metrics["reference"]["uniform_js"] != pytest.approx(_uniform_js(intact), abs=1e-6)


def test_cut_inside_a_member_names_the_shard(shards, tmp_path):
    shard = shards / TEST_SHARD
    json_member = _members(shard)[2 * KEPT + 1]
    _cut(shard, json_member.offset_data + json_member.size // 2)
    with pytest.raises(RuntimeError, match=r"split 'test'.*144 samples.*test-000000\.tar: cut inside member"):
        main(_args(shards, tmp_path))


def test_garbage_audio_is_counted_as_skipped_with_its_key(shards, tmp_path):
    shard = shards / TEST_SHARD
    members = _members(shard)
    bad = members[2 * 7]  # the 8th sample's FLAC
    with tarfile.open(shard) as tar:
        payload = [(m, tar.extractfile(m).read()) for m in members]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in payload:
            data = b"not audio at all" * 64 if member.name == bad.name else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    main(_args(shards, tmp_path))
    metrics = _metrics(tmp_path)
    assert metrics["complete"] is True  # every sample of the card is scored or skipped with a reason
    assert (metrics["expected"], metrics["scored"], metrics["skipped"]) == (144, 143, 1)
    (skip,) = metrics["evaluation"]["skipped_samples"]
    assert skip["key"] == bad.name.rsplit(".", 1)[0]
    assert skip["shard"].endswith(TEST_SHARD)
    assert skip["reason"]


def test_a_pass_cut_by_limit_test_batches_is_incomplete_without_error(shards, tmp_path):
    _cut_at_boundary(shards)
    main([*_args(shards, tmp_path), "--trainer.limit_test_batches", "2"])
    metrics = _metrics(tmp_path)
    assert metrics["complete"] is False
    assert metrics["evaluation"]["limited"] is True
    assert metrics["scored"] <= 32
    assert metrics["expected"] == 144


def test_a_cut_validation_shard_stops_fit_before_a_biased_checkpoint_is_chosen(shards, tmp_path):
    """Validation is held to the card as test is: 72 of 144 val clips must not silently choose the best checkpoint."""
    shard = shards / "val-000000.tar"
    _cut(shard, _members(shard)[2 * 72].offset)
    args = _args(shards, tmp_path, "--trainer.limit_val_batches", "1.0", "--trainer.max_epochs", "1")
    args[0] = "fit"
    with pytest.raises(RuntimeError, match=r"split 'val'.*144 samples, 72 were scored.*val-000000\.tar"):
        main(args)
    assert not list((tmp_path / "eval" / "v").glob("checkpoints/best-*.ckpt"))
