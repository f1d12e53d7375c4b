"""DDP through the real CLI on CPU: 2 gloo processes, and two one-process "nodes" on localhost.

Each run completes fit and test; its test metrics must equal a single-process test of the same checkpoint.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cli_fixtures import TINY_DEMO

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BASE = [
    *TINY_DEMO,
    "--data.shards",
    str(ROOT / "shards" / "demo"),
    "--trainer.limit_val_batches",
    "1.0",
    "--trainer.limit_test_batches",
    "1.0",
    "--data.max_batch_size",
    "16",
    "--data.max_batch_seconds",
    "48",
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _logger_args(tmp_path: Path, version: str) -> list[str]:
    return [
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
        "--trainer.logger.init_args.name",
        "ddp",
        "--trainer.logger.init_args.version",
        version,
        "--trainer.default_root_dir",
        str(tmp_path),
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _torchrun(args: list[str], nnodes: int, nproc: int, port: int, timeout: int = 420) -> None:
    procs = []
    for node in range(nnodes):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nnodes={nnodes}",
            f"--nproc-per-node={nproc}",
            f"--node-rank={node}",
            "--master-addr=127.0.0.1",
            f"--master-port={port}",
            str(ROOT / "train.py"),
            *args,
        ]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=timeout)
        outputs.append(out.decode(errors="replace"))
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-4000:]


def _single(args: list[str]) -> None:
    cmd = [sys.executable, str(ROOT / "train.py"), *args]
    result = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def _test_metrics(tmp_path: Path, version: str) -> dict[str, float]:
    metrics = json.loads((tmp_path / "ddp" / version / "test_metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k.startswith("test/")}


def _test_predictions(tmp_path: Path, version: str) -> list[dict]:
    lines = (tmp_path / "ddp" / version / "test_predictions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _assert_same(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-5, nan_ok=True), key


@pytest.mark.parametrize(("nnodes", "nproc"), [(1, 2), (2, 1)], ids=["2-process-gloo", "two-nodes"])
def test_ddp_fit_and_test_match_single_process(tmp_path, nnodes, nproc):
    dist = ["--trainer.strategy", "ddp", "--trainer.devices", str(nproc), "--trainer.num_nodes", str(nnodes)]
    fit_args = ["fit", *BASE, *dist, *_logger_args(tmp_path, "fit"), "--test_after_fit", "true"]
    _torchrun(fit_args, nnodes, nproc, _port())
    checkpoint = tmp_path / "ddp" / "fit" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    fit_test = _test_metrics(tmp_path, "fit")  # the best checkpoint, tested on all ranks right after fit

    test_args = ["test", *BASE, *dist, *_logger_args(tmp_path, "ddp-test"), "--ckpt_path", str(checkpoint)]
    _torchrun(test_args, nnodes, nproc, _port())
    single_args = ["test", *BASE, *_logger_args(tmp_path, "single-test"), "--ckpt_path", str(checkpoint)]
    _single(single_args)

    single = _test_metrics(tmp_path, "single-test")
    assert single["test/count"] == 144  # every test clip exactly once
    _assert_same(_test_metrics(tmp_path, "ddp-test"), single)
    assert fit_test["test/count"] == 144
    # test_predictions.jsonl: every rank's records merged on rank 0, one line per scored clip, as one process
    merged = _test_predictions(tmp_path, "ddp-test")
    alone = _test_predictions(tmp_path, "single-test")
    assert len(merged) == len(alone) == len(_test_predictions(tmp_path, "fit")) == 144
    assert [r["id"] for r in merged] == [r["id"] for r in alone]
    for got, want in zip(merged, alone, strict=True):
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-5)
        assert got["target"] == want["target"]
