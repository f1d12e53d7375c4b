"""Every YAML in configs/ parses, and each model config runs fit / validate / test / predict on the tiny overlay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ser_lightning.cli.train import main

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml"))
TINY = str(ROOT / "configs" / "debug" / "tiny.yaml")
TINY_TEXT = str(ROOT / "configs" / "debug" / "tiny_text.yaml")
TEXT_MODELS = {"amber2.yaml", "amber2_cbce.yaml", "demo.yaml"}


def overlays(config: Path) -> list[str]:
    """The tiny overlays a config needs (text models also swap their text encoder)."""
    files = [TINY, TINY_TEXT] if config.name in TEXT_MODELS else [TINY]
    return [arg for f in files for arg in ("--config", f)]


def run_args(tmp_path: Path, name: str) -> list[str]:
    return [
        "--trainer.logger.init_args.save_dir",
        str(tmp_path),
        "--trainer.logger.init_args.name",
        name,
        "--trainer.logger.init_args.version",
        "v",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--data.shards",
        str(ROOT / "shards" / "demo"),
    ]


def test_every_config_is_covered():
    assert {p.name for p in CONFIGS} >= {"amber2.yaml", "amber2_cbce.yaml", "wavlm_multitask.yaml", "demo.yaml"}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: ser_lightning.models." in printed


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_runs_on_tiny_overlay(config, tmp_path):
    args = ["--config", str(config), *overlays(config), *run_args(tmp_path, config.stem)]
    main(["fit", *args, "--test_after_fit", "false"])
    run_dir = tmp_path / config.stem / "v"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))

    main(["validate", *args, "--ckpt_path", str(checkpoint)])
    validated = json.loads((run_dir / "validate_metrics.json").read_text())
    assert 0.0 <= validated["val/js"] <= 1.0
    assert "val/bin1/js" in validated

    main(["test", *args, "--ckpt_path", str(checkpoint)])
    tested = json.loads((run_dir / "test_metrics.json").read_text())
    assert {"test/js", "test/bc", "test/r2", "test/acc", "test/f1", "test/wf1", "test/bin3/js"} <= tested.keys()
    assert tested["reference"]["uniform_js"] > 0

    predictions = tmp_path / "predictions.jsonl"
    main(["predict", *args, "--ckpt_path", str(checkpoint), "--predictions.output_path", str(predictions)])
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert lines
    assert {"id", "classes", "probabilities", "entropy"} == set(lines[0])
    assert len(lines[0]["probabilities"]) == len(lines[0]["classes"])
    assert sum(lines[0]["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    assert len({line["id"] for line in lines}) == len(lines)
