"""Qwen2AudioDistribution through the real CLI: a tiny backbone saved to a local directory, fit -> test -> predict,
and a 2-process gloo DDP fit whose checkpoint tests like a single-process one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from qwen2_fixtures import tiny_qwen2_audio_dir  # noqa: F401 (the session fixture)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ser_lightning.cli.train import main

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["configs/qwen2_audio_lora.yaml", "configs/debug/tiny_qwen2_audio.yaml"]


def base_args(save_dir: Path, version: str, backbone: Path) -> list[str]:
    return [
        *[arg for c in CONFIGS for arg in ("--config", str(ROOT / c))],
        f"--model.init_args.backbone={backbone}",
        "--model.init_args.random_config=null",
        f"--data.shards={ROOT / 'shards' / 'demo'}",
        f"--trainer.logger.init_args.save_dir={save_dir}",
        "--trainer.logger.init_args.name=qwen",
        f"--trainer.logger.init_args.version={version}",
    ]


def test_fit_test_predict_from_a_local_backbone_directory(tmp_path, tiny_qwen2_audio_dir):  # noqa: F811
    main(["fit", *base_args(tmp_path, "fit", tiny_qwen2_audio_dir), "--trainer.max_epochs=2"])
    ckpts = tmp_path / "qwen" / "fit" / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    keys = list(last["state_dict"])
    assert keys, "the checkpoint holds no trained parameters"
    assert all("lora_" in k or k.startswith("head.") for k in keys), [k for k in keys if "lora_" not in k][:5]
    assert last["hyper_parameters"]["classes"] == json.loads((ROOT / "shards/demo/card.json").read_text())["classes"]
    for adapter in ("best_adapter", "last_adapter"):
        assert (ckpts / adapter / "adapter_config.json").is_file(), adapter

    main(["test", *base_args(tmp_path, "test", tiny_qwen2_audio_dir), f"--ckpt_path={ckpts / 'last.ckpt'}"])
    metrics = json.loads((tmp_path / "qwen" / "test" / "test_metrics.json").read_text())
    assert metrics["scored"] == metrics["test/count"] > 0
    assert 0.0 <= metrics["test/js"] <= 1.0
    assert "test/bin1/js" in metrics

    main(["predict", *base_args(tmp_path, "predict", tiny_qwen2_audio_dir), f"--ckpt_path={ckpts / 'last.ckpt'}"])
    rows = [json.loads(line) for line in (tmp_path / "qwen" / "predict" / "predictions.jsonl").read_text().splitlines()]
    assert rows
    for row in rows:
        assert sum(row["probabilities"]) == pytest.approx(1.0, abs=1e-5)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_fit(tmp_path, tiny_qwen2_audio_dir):  # noqa: F811
    args = [
        "fit",
        *base_args(tmp_path, "ddp", tiny_qwen2_audio_dir),
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.limit_val_batches=1.0",
    ]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
           f"--master-port={_port()}", str(ROOT / "train.py"), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    ckpt = torch.load(tmp_path / "qwen" / "ddp" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] > 0
    events = EventAccumulator(str(tmp_path / "qwen" / "ddp"))
    events.Reload()
    assert [e.value for e in events.Scalars("val/count")][-1] == 144  # the val split scored once over both ranks
