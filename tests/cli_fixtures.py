"""Command-line pieces shared by the CLI tests: the tiny demo run, ``configs/demo.yaml`` with its debug overlays.

Import it by name (``from cli_fixtures import TINY_DEMO``), as ``shard_fixtures``: ``tests/`` is on ``sys.path``.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_SHARDS = ROOT / "shards" / "demo"
# the overlays configs/demo.yaml's "# overlays:" header names: a tiny random WavLM and text encoder
TINY_DEMO = [
    *("--config", str(ROOT / "configs" / "demo.yaml")),
    *("--config", str(ROOT / "configs" / "debug" / "tiny.yaml")),
    *("--config", str(ROOT / "configs" / "debug" / "tiny_text.yaml")),
]
