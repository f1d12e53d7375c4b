"""Gradual unfreezing and NewBob through the real CLI (paper 004 as its authors ran it), alone and under 2-process DDP.

``configs/wavlm_multitask.yaml`` on the tiny overlay (2 transformer layers) with a 3-epoch schedule written here:
the top layer trains from epoch 1, both from epoch 3 with the backbone's rate x 0.5. A checkpoint per epoch shows
which parameters moved; the TensorBoard events show the logged layers, factors and rates.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard_events import scalars

from ser_lightning.cli.train import main

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "wavlm_multitask.yaml"
TINY = ROOT / "configs" / "debug" / "tiny.yaml"
LAYER = "audio_encoder.model.encoder.layers.{}."


def _overlay(tmp_path: Path) -> Path:
    path = tmp_path / "unfreeze.yaml"
    path.write_text(
        "trainer:\n"
        "  callbacks:\n"
        "    - class_path: ser_lightning.callbacks.unfreezing.GradualUnfreezing\n"
        "      init_args:\n"
        "        steps: [{epoch: 1, layers: 1, lr_factor: 1.0}, {epoch: 3, layers: 2, lr_factor: 0.5}]\n"
    )
    return path


def _args(tmp_path: Path) -> list[str]:
    return [
        "fit",
        *("--config", str(CONFIG), "--config", str(TINY), "--config", str(_overlay(tmp_path))),
        *("--model.init_args.audio_encoder.init_args.freeze", "below_layers"),
        *("--trainer.logger.init_args.save_dir", str(tmp_path)),
        *("--trainer.logger.init_args.name", "uf", "--trainer.logger.init_args.version", "v"),
        *("--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "3"),
        *("--checkpoint.save_top_k", "-1", "--checkpoint.filename", "e{epoch}"),
    ]


def _states(run_dir: Path) -> list[dict[str, torch.Tensor]]:
    paths = [run_dir / "checkpoints" / f"e{e}.ckpt" for e in range(3)]
    return [torch.load(p, map_location="cpu", weights_only=False)["state_dict"] for p in paths]


def _moved(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return any(not torch.equal(a[k], b[k]) for k in keys)


def _scalars(run_dir: Path, tag: str) -> list[float]:
    found = scalars(run_dir, tag)
    return [found[s] for s in sorted(found)]


def _check(run_dir: Path) -> None:
    e1, e2, e3 = _states(run_dir)
    # epochs 1-2: only the top layer (1) trains; epoch 3: both
    assert _moved(e1, e2, LAYER.format(1))
    assert not _moved(e1, e2, LAYER.format(0))
    assert _moved(e2, e3, LAYER.format(0))
    assert _moved(e2, e3, LAYER.format(1))
    for frozen in ("audio_encoder.model.feature_extractor.", "audio_encoder.model.feature_projection."):
        assert not _moved(e1, e3, frozen)  # below the layers nothing ever trains (freeze: below_layers)
    assert _moved(e1, e2, "audio_encoder.pooling.")
    assert _moved(e1, e2, "categorical_head.")
    assert _scalars(run_dir, "train/unfreeze/layers") == [1.0, 1.0, 2.0]
    assert _scalars(run_dir, "train/unfreeze/lr_factor") == [1.0, 1.0, 0.5]
    # NewBob on val/loss against the previous epoch (threshold 0.0025, factor 0.9), then epoch 3's factor 0.5
    loss = _scalars(run_dir, "val/loss")
    annealed = 0.9 if (loss[0] - loss[1]) / loss[0] < 0.0025 else 1.0
    assert _scalars(run_dir, "train/unfreeze/encoder_lr") == pytest.approx([1e-5, 1e-5, 1e-5 * annealed * 0.5])


def test_top_layers_train_on_schedule_with_their_rate_factors(tmp_path):
    main(_args(tmp_path))
    _check(tmp_path / "uf" / "v")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_schedule_under_two_process_ddp(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={_port()}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    args = [*_args(tmp_path), "--trainer.strategy", "ddp", "--trainer.devices", "2"]
    done = subprocess.run([*cmd, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr).decode(errors="replace")[-4000:]
    _check(tmp_path / "uf" / "v")
