"""Egress and wall time of a DDP evaluation pass from S3: split by sample (every slot reads every shard) vs by shard.

Starts ``moto_server`` on 127.0.0.1, uploads a shard directory, and runs ``train.py test`` of the tiny demo model
(seeded, so both passes score the same weights) with ``--trainer.devices RANKS`` DDP processes on the CPU and
``--data.num_workers WORKERS`` loader workers each, once per ``--data.eval_split``. The split tested is the demo's
train split (4 shards, 864 clips): with 2 ranks x 2 workers it has as many shards as slots, so ``auto`` divides it
by shard. Prints one JSON object: per mode the bytes read from the store (the metrics JSON's
``evaluation.bytes_read``), the samples scored, test JS, the wall time, and the ratios by-sample / by-shard.

    python benchmarks/bench_remote_eval.py --ranks 2 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from machine import machine  # noqa: E402
from object_store import CREDENTIALS, free_port, wait_for_port  # noqa: E402

TINY = [
    *("--config", "configs/demo.yaml"),
    *("--config", "configs/debug/tiny.yaml"),
    *("--config", "configs/debug/tiny_text.yaml"),
]


def _run_pass(url: str, mode: str, ranks: int, workers: int, out: Path, env: dict[str, str]) -> dict:
    args = [
        sys.executable, "train.py", "test", *TINY, f"--data.shards={url}", "--data.test_split=train",
        f"--data.eval_split={mode}", f"--data.num_workers={workers}", f"--trainer.devices={ranks}",
        "--trainer.strategy=ddp" if ranks > 1 else "--trainer.strategy=auto", "--trainer.limit_test_batches=1.0",
        "--data.max_batch_size=16", "--data.max_batch_seconds=48", "--bootstrap_samples=0",
        f"--trainer.logger.init_args.save_dir={out}", f"--trainer.logger.init_args.name={mode}",
        "--trainer.logger.init_args.version=v",
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{mode}: train.py test failed:\n{done.stderr[-3000:]}")
    metrics = json.loads((out / mode / "v" / "test_metrics.json").read_text())
    return {
        "bytes_read": metrics["evaluation"]["bytes_read"],
        "scored": metrics["scored"],
        "test_js": metrics["test/js"],
        "seconds": round(seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Run both passes and print the JSON report."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shards", default=str(ROOT / "shards" / "demo"), help="local shard directory to upload")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "OMP_NUM_THREADS": "1"}
    try:
        wait_for_port(port)
        os.environ.update(env)
        import s3fs

        fs = s3fs.S3FileSystem()
        fs.mkdir("bench")
        local = Path(args.shards)
        for path in sorted(local.glob("*")):
            if path.is_file():
                fs.put_file(str(path), f"bench/demo/{path.name}")
        split_bytes = sum(p.stat().st_size for p in local.glob("train-*.tar"))
        with tempfile.TemporaryDirectory() as tmp:
            url = "s3://bench/demo"
            modes = {m: _run_pass(url, m, args.ranks, args.workers, Path(tmp), env) for m in ("sample", "shard")}
    finally:
        server.terminate()
        server.wait(timeout=10)
    report = {
        "machine": machine(),
        "ranks": args.ranks,
        "workers": args.workers,
        "split": "train (4 shards)",
        "split_bytes": split_bytes,
        "modes": modes,
        "bytes_ratio_sample_to_shard": round(modes["sample"]["bytes_read"] / max(modes["shard"]["bytes_read"], 1), 3),
        "time_ratio_sample_to_shard": round(modes["sample"]["seconds"] / modes["shard"]["seconds"], 3),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
