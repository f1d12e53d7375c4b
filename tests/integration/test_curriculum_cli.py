"""The entropy curriculum through the real CLI: its schedule continues after ``fit --ckpt_path last``, and under DDP.

Runs ``configs/wavlm_multitask_curriculum.yaml`` on the tiny overlay with a short schedule (an overlay written
here replaces the config's callbacks) and reads ``train/curriculum/*`` back from the TensorBoard events.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorboard_events import scalars as _scalars

from ser_lightning.cli.train import main
from ser_lightning.data.shards import iter_shard_meta

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHARDS = ROOT / "shards" / "demo"
CONFIG = ROOT / "configs" / "wavlm_multitask_curriculum.yaml"  # an overlay: the CLI puts wavlm_multitask.yaml first
TINY = ROOT / "configs" / "debug" / "tiny.yaml"


def _schedule_overlay(tmp_path: Path, warmup: int, ramp: int, start: float, end: float) -> Path:
    path = tmp_path / "schedule.yaml"
    path.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: ser_lightning.callbacks.curriculum.EntropyCurriculum\n"
        "      init_args:\n"
        "        mode: filter\n"
        f"        warmup_epochs: {warmup}\n"
        f"        ramp_epochs: {ramp}\n"
        f"        start_threshold: {start}\n"
        f"        end_threshold: {end}\n"
    )
    return path


def _args(tmp_path: Path, overlay: Path, epochs: int) -> list[str]:
    return [
        *("--config", str(CONFIG), "--config", str(TINY), "--config", str(overlay)),
        *("--trainer.logger.init_args.save_dir", str(tmp_path)),
        *("--trainer.logger.init_args.name", "cur"),
        *("--trainer.logger.init_args.version", "v"),
        *("--trainer.default_root_dir", str(tmp_path)),
        *("--data.shards", str(SHARDS)),
        *("--trainer.max_epochs", str(epochs)),
    ]


def test_the_threshold_continues_after_fit_ckpt_path_last(tmp_path):
    overlay = _schedule_overlay(tmp_path, warmup=1, ramp=3, start=0.5, end=0.95)
    main(["fit", *_args(tmp_path, overlay, 2), "--test_after_fit", "false"])
    run_dir = tmp_path / "cur" / "v"
    assert sorted(_scalars(run_dir, "train/curriculum/threshold").values()) == pytest.approx([0.5, 1.0])
    main(["fit", *_args(tmp_path, overlay, 4), "--ckpt_path", "last", "--test_after_fit", "false"])
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 2
    threshold = _scalars(run_dir, "train/curriculum/threshold")
    # Lightning epoch 0 is the warm-up (everything kept: 1), then 0.5 + t (0.95 - 0.5), t = 0, 1/2, 1
    assert [threshold[s] for s in sorted(threshold)] == pytest.approx([1.0, 0.5, 0.725, 0.95])
    assert len(set(threshold)) == 4  # four epochs at four steps: the resumed run went on, not back
    kept = _scalars(run_dir, "train/curriculum/kept_fraction")
    values = [kept[s] for s in sorted(kept)]
    assert values[0] == 1.0
    assert all(0.0 <= v <= 1.0 for v in values)
    active = _scalars(run_dir, "train/curriculum/active")
    assert [active[s] for s in sorted(active)] == [0.0, 1.0, 1.0, 1.0]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_fraction_at_most(threshold: float) -> float:
    """Fraction of the train split whose stored primary entropy / log C is <= threshold (numpy, from the shards)."""
    metas = list(iter_shard_meta(SHARDS, "train", sources=["primary"]))
    h = np.array([m["entropy"]["primary"] for m in metas], dtype=float) / math.log(len(metas[0]["classes"]))
    return float((np.isfinite(h) & (h <= threshold)).mean())


@pytest.mark.slow
def test_two_process_ddp_fit_logs_the_schedule_over_all_ranks(tmp_path):
    overlay = _schedule_overlay(tmp_path, warmup=0, ramp=1, start=0.5, end=0.6)  # active from epoch 0
    args = [
        "fit",
        *_args(tmp_path, overlay, 1),
        *("--trainer.strategy", "ddp", "--trainer.devices", "2"),
        *("--trainer.limit_train_batches", "1.0", "--trainer.limit_val_batches", "1"),
        *("--data.max_batch_size", "16", "--data.max_batch_seconds", "48"),
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={_port()}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    done = subprocess.run([*cmd, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")[-4000:]
    run_dir = tmp_path / "cur" / "v"
    assert list(_scalars(run_dir, "train/curriculum/threshold").values()) == pytest.approx([0.6])  # ramp 1: end
    (kept,) = _scalars(run_dir, "train/curriculum/kept_fraction").values()
    # both ranks' samples are counted: the train stream is an endless shuffled stream cut to ceil(N / (2 x batch))
    # batches per rank, about one pass over the split, so the fraction is close to the split's own
    assert kept == pytest.approx(_train_fraction_at_most(0.6), abs=0.03)
