"""``benchmarks/bench_qwen2_audio.py --tiny`` runs on the CPU and prints every row of its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_smoke_run_prints_the_table() -> None:
    script = ROOT / "benchmarks" / "bench_qwen2_audio.py"
    args = ["--tiny", "--steps", "1", "--warmup", "1", "--batch", "2", "--eval-batch", "2"]
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=600, cwd=ROOT / "benchmarks"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| path | mode | batch | utt/s")
    rows = table[2:]
    assert len(rows) == 9
    assert sum("| train |" in r for r in rows) == 4
    assert "skipped: QLoRA needs CUDA" in rows[3]
    assert all("GiB" in r for i, r in enumerate(rows) if i != 3)
