"""Every YAML in configs/ parses, alone and with its debug overlays, and runs the stages it declares on them.

Header convention: each top-level ``configs/*.yaml`` starts with two comment lines, ``# overlays: debug/a.yaml ...``
(the ``configs/debug/`` overlays, in order, that make it tiny) and ``# stages: fit validate test predict`` (the
subcommands it supports; models that only evaluate leave out ``fit``); every ``configs/debug/*.yaml`` is an overlay
and must be named by at least one config.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ser_lightning.cli.train import main

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
OVERLAYS = sorted((CONFIG_DIR / "debug").glob("*.yaml"))
STAGES = ("fit", "validate", "test", "predict")
HEADER = re.compile(r"^#\s*(overlays|stages):(.*)$")


def header(config: Path) -> dict[str, list[str]]:
    """The ``# overlays:`` and ``# stages:`` comment lines at the top of a config, as lists of words."""
    found: dict[str, list[str]] = {}
    for line in config.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break  # the header is the leading comment block
        match = HEADER.match(line)
        if match:
            found[match.group(1)] = match.group(2).split()
    return found


def overlay_args(config: Path) -> list[str]:
    """``--config`` arguments for the overlays a config's header names (paths relative to configs/)."""
    return [arg for name in header(config)["overlays"] for arg in ("--config", str(CONFIG_DIR / name))]


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


def print_config(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The config the CLI would run with (``--print_config`` exits after printing it)."""
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


def test_configs_are_discovered():
    assert CONFIG_DIR / "demo.yaml" in CONFIGS  # the README's main command
    assert OVERLAYS


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_declares_overlays_and_stages(config):
    declared = header(config)
    assert declared.keys() == {"overlays", "stages"}, f"{config.name} lacks the '# overlays:' / '# stages:' header"
    assert declared["stages"], f"{config.name} declares no stage"
    assert set(declared["stages"]) <= set(STAGES), declared["stages"]
    for name in declared["overlays"]:
        assert (CONFIG_DIR / name).parent == CONFIG_DIR / "debug", f"{name}: overlays live in configs/debug/"
        assert (CONFIG_DIR / name).is_file(), name


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_every_overlay_is_used(overlay):
    named = {CONFIG_DIR / name for config in CONFIGS for name in header(config).get("overlays", [])}
    assert overlay in named, f"no config names debug/{overlay.name} in its '# overlays:' header"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_parses_alone_and_with_overlays(config, capsys):
    stage = header(config)["stages"][0]
    alone = print_config([stage, "--config", str(config)], capsys)
    assert "class_path: ser_lightning.models." in alone
    tiny = print_config([stage, "--config", str(config), *overlay_args(config)], capsys)
    assert "class_path: ser_lightning.models." in tiny
    assert not overlay_args(config) or tiny != alone  # the overlays took effect


def test_logger_and_checkpoint_come_from_the_cli_defaults(capsys):
    printed = print_config(["fit", "--config", str(CONFIG_DIR / "amber2.yaml")], capsys)
    assert "class_path: lightning.pytorch.loggers.TensorBoardLogger" in printed
    assert "save_dir: runs" in printed
    assert "name: amber2" in printed
    assert "monitor: val/js" in printed
    assert "seed_everything: 0" in printed


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_runs_its_stages_on_tiny_overlays(config, tmp_path):
    stages = header(config)["stages"]
    args = ["--config", str(config), *overlay_args(config), *run_args(tmp_path, config.stem)]
    run_dir = tmp_path / config.stem / "v"
    checkpoint: list[str] = []
    if "fit" in stages:
        main(["fit", *args, "--test_after_fit", "false"])
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
        assert list(run_dir.glob("events.out.tfevents.*"))
        checkpoint = ["--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")]

    if "validate" in stages:
        main(["validate", *args, *checkpoint])
        validated = json.loads((run_dir / "validate_metrics.json").read_text())
        assert 0.0 <= validated["val/js"] <= 1.0
        assert "val/bin1/js" in validated

    if "test" in stages:
        main(["test", *args, *checkpoint])
        tested = json.loads((run_dir / "test_metrics.json").read_text())
        assert {"test/js", "test/bc", "test/r2", "test/acc", "test/f1", "test/wf1", "test/bin3/js"} <= tested.keys()
        assert tested["reference"]["uniform_js"] > 0

    if "predict" in stages:
        predictions = tmp_path / "predictions.jsonl"
        main(["predict", *args, *checkpoint, "--predictions.output_path", str(predictions)])
        lines = [json.loads(line) for line in predictions.read_text().splitlines()]
        assert lines
        assert {"id", "classes", "probabilities", "entropy"} <= set(lines[0])  # ALMs add their raw answers
        assert len(lines[0]["probabilities"]) == len(lines[0]["classes"])
        assert sum(lines[0]["probabilities"]) == pytest.approx(1.0, abs=1e-5)
        assert len({line["id"] for line in lines}) == len(lines)
