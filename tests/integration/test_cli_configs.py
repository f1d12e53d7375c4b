"""Every YAML in configs/ parses, alone and with its debug overlays, and runs the stages it declares on them.

Header convention: each top-level ``configs/*.yaml`` starts with two comment lines, ``# overlays: debug/a.yaml ...``
(the ``configs/debug/`` overlays, in order, that make it tiny) and ``# stages: fit validate test predict`` (the
subcommands it supports; models that only evaluate leave out ``fit``); a config that is an overlay of another adds
``# parent: other.yaml`` (the CLI runs ``--config it.yaml`` as ``--config other.yaml --config it.yaml``); every
``configs/debug/*.yaml`` is an overlay and must be named by at least one config (``configs/debug/shared/`` holds the
pieces they include).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from ser_lightning.cli.train import main

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
OVERLAYS = sorted((CONFIG_DIR / "debug").glob("*.yaml"))
STAGES = ("fit", "validate", "test", "predict")
HEADER = re.compile(r"^#\s*(overlays|stages|parent):(.*)$")


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


def config_args(config: Path) -> list[str]:
    """``--config`` arguments of a config: its parent first when it is an overlay of one (``# parent:``)."""
    parents = [CONFIG_DIR / name for name in header(config).get("parent", [])]
    return [arg for path in (*parents, config) for arg in ("--config", str(path))]


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
    assert {"overlays", "stages"} <= declared.keys() <= {"overlays", "stages", "parent"}, (
        f"{config.name} lacks the '# overlays:' / '# stages:' header"
    )
    for parent in declared.get("parent", []):
        assert (CONFIG_DIR / parent).is_file(), parent
        assert "parent" not in header(CONFIG_DIR / parent), f"{parent}: one level of parents"
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
    if header(config).get("parent"):  # the CLI puts an overlay config's parent before it
        assert print_config([stage, *config_args(config)], capsys) == alone
    tiny = print_config([stage, "--config", str(config), *overlay_args(config)], capsys)
    assert "class_path: ser_lightning.models." in tiny
    assert not overlay_args(config) or tiny != alone  # the overlays took effect


def _flat(tree: object, prefix: str = "") -> dict[str, object]:
    """``{"a.b.c": value}`` of a nested mapping (lists are values)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, object] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


@pytest.mark.parametrize("config", [c for c in CONFIGS if header(c).get("parent")], ids=lambda p: p.name)
def test_an_overlay_config_changes_its_parent_only_where_it_says(config, capsys):
    stage = header(config)["stages"][0]
    parent = CONFIG_DIR / header(config)["parent"][0]
    base = _flat(yaml.safe_load(print_config([stage, "--config", str(parent)], capsys)))
    composed = _flat(yaml.safe_load(print_config([stage, *config_args(config)], capsys)))
    own = _flat(yaml.safe_load(config.read_text(encoding="utf-8")))
    changed = {k for k in base.keys() | composed.keys() if base.get(k) != composed.get(k)}
    assert changed
    assert all(any(k == o or k.startswith(o + ".") for o in own) for k in changed), changed - own.keys()
    assert all(composed[k] == v for k, v in own.items() if not isinstance(v, list)), own


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
