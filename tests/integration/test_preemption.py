"""Pre-emption: SIGTERM to a real ``train.py fit`` saves ``last.ckpt`` and exits 143; ``--ckpt_path last`` resumes it.

Also: the training stream resumed after ``k`` batches yields exactly the batches an uninterrupted pass yields after
its first ``k`` (so a run resumed mid-epoch continues at the sample where it stopped), and ``--ckpt_path last``
without a ``last.ckpt`` for the run name is an error, not a silent fresh start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ser_lightning.cli.train import main
from ser_lightning.data.stream.datamodule import EpochDataLoader, SERDataModule
from ser_lightning.runs.run_dirs import find_last

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHARDS = ROOT / "shards" / "demo"
EPOCHS, BATCHES = 2, 6


def fit_args(save_dir: Path) -> list[str]:
    configs = ["configs/demo.yaml", "configs/debug/tiny.yaml", "configs/debug/tiny_text.yaml"]
    return [
        *[arg for c in configs for arg in ("--config", str(ROOT / c))],
        f"--trainer.logger.init_args.save_dir={save_dir}",
        "--trainer.logger.init_args.name=pre",
        f"--trainer.max_epochs={EPOCHS}",
        f"--trainer.limit_train_batches={BATCHES}",
        "--checkpoint.save_top_k=-1",  # a checkpoint per epoch: the last epoch's proves the resumed run finished
        f"--data.shards={SHARDS}",
    ]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_sigterm_saves_last_and_fit_ckpt_path_last_resumes(tmp_path):
    cmd = [sys.executable, str(ROOT / "train.py"), "fit", *fit_args(tmp_path / "runs")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ckpts = tmp_path / "runs" / "pre" / "version_0" / "checkpoints"
    with open(tmp_path / "first.log", "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not list(ckpts.glob("best-epoch00-*.ckpt")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)  # during epoch 1
        rc = proc.wait(timeout=120)
    first = (tmp_path / "first.log").read_text()
    assert rc == 128 + signal.SIGTERM, first[-3000:]  # non-zero: a scheduler requeues, a pipeline stops
    assert "SIGTERM at global step" in first
    state = load(ckpts / "last.ckpt")
    step = state["global_step"]
    assert BATCHES <= step < EPOCHS * BATCHES
    loader = state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader == {"epoch": step // BATCHES, "batches": step % BATCHES}
    assert not list(tmp_path.rglob("test_metrics.json"))  # test_after_fit skipped after an interrupted fit

    resume = [*cmd, "--ckpt_path", "last", "--test_after_fit", "false"]
    done = subprocess.run(resume, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert f"Restored all states from the checkpoint at {ckpts / 'last.ckpt'}" in log
    if step % BATCHES:
        assert f"resuming epoch {step // BATCHES} of the training stream after {step % BATCHES} batches" in log
    assert sorted(p.name for p in (tmp_path / "runs" / "pre").iterdir()) == ["version_0"]  # same TensorBoard run
    assert len(list((ckpts.parent).glob("events.out.tfevents.*"))) == 2  # both processes logged into it
    (final,) = ckpts.glob(f"best-epoch{EPOCHS - 1:02d}-*.ckpt")
    assert load(final)["global_step"] == EPOCHS * BATCHES  # continued, not restarted from step 0


def test_ckpt_path_last_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .*last.ckpt for run name 'pre'"):
        main(["fit", *fit_args(tmp_path / "runs"), "--ckpt_path", "last"])
    assert not (tmp_path / "runs" / "pre").exists()


def test_find_last_picks_the_newest_version(tmp_path):
    for i, version in enumerate(["version_0", "version_2", "version_1"]):
        path = tmp_path / "pre" / version / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        os.utime(path, (1000 + i, 1000 + i))
    assert find_last(tmp_path, "pre") == tmp_path / "pre" / "version_1" / "checkpoints" / "last.ckpt"
    assert find_last(tmp_path, "pre", 2) == tmp_path / "pre" / "version_2" / "checkpoints" / "last.ckpt"
    assert find_last(tmp_path, "pre", "nope") is None
    assert find_last(tmp_path, "other") is None


@pytest.mark.parametrize("workers", [0, 2])
def test_train_stream_resumes_at_the_batch_where_it_stopped(workers):
    def ids(loader: EpochDataLoader) -> list[list[str]]:
        return [batch["ids"] for batch in loader]

    dm = SERDataModule(str(SHARDS), max_batch_size=4, max_batch_seconds=16.0, train_batches_per_epoch=7)
    dm.num_workers = workers
    full = ids(dm.train_dataloader())
    assert len(full) == 7
    for skip in (3, 4):
        loader = dm.train_dataloader()
        loader.load_state_dict({"epoch": 0, "batches": skip})
        assert ids(loader) == full[skip:]
        assert ids(loader) != full  # the next pass is epoch 1's fresh order, no skip


def test_last_ckpt_follows_every_epoch_even_without_a_new_best(tmp_path):
    """A hard kill (no signal handler runs) must resume from the latest epoch, not from the last improving one.

    With lr 0 the weights never change, so val/js is the same every epoch and, in ``max`` mode, only epoch 0 is
    ever "best": Lightning 2.6 alone would leave last.ckpt at epoch 0.
    """
    args = [a for a in fit_args(tmp_path / "runs") if not a.startswith("--checkpoint.save_top_k")]
    main(["fit", *args, "--model.init_args.lr=0", "--checkpoint.mode=max", "--test_after_fit=false"])
    ckpts = tmp_path / "runs" / "pre" / "version_0" / "checkpoints"
    best = [p for p in ckpts.glob("best-*.ckpt")]
    assert [p.name.split("-js")[0] for p in best] == ["best-epoch00"]
    last = load(ckpts / "last.ckpt")
    assert last["epoch"] == EPOCHS - 1
    assert last["global_step"] == EPOCHS * BATCHES
