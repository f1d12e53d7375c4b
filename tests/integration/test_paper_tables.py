"""Each paper's table as one command (``ser-experiment --table configs/tables/<paper>.yaml``), on a slice of its grid.

Every table file parses and names configs that exist; each command then runs end to end on the demo shards with
the tiny overlays, on two cells x one fold x one seed (``--only``), and its ``table.md`` has the paper's columns
with numbers where the slice ran and ``n/a`` elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_fixtures import DEMO_SHARDS, ROOT

from ser_lightning.cli.experiment import main
from ser_lightning.data.dime.index import build_dime_index
from ser_lightning.runs.tables import read_table_file

pytestmark = pytest.mark.integration

TABLES = sorted((ROOT / "configs" / "tables").glob("*.yaml"))
DEBUG = ROOT / "configs" / "debug"
FAST = ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1", "--data.max_batch_size", "2"]


@pytest.mark.parametrize("path", TABLES, ids=lambda p: p.stem)
def test_every_table_file_parses_and_names_existing_configs(path):
    spec = read_table_file(path)
    assert spec.tables
    assert spec.configs
    named = [*spec.configs, *(a[i + 1] for ax in spec.axes for a in ax.values.values() for i, x in enumerate(a)
                               if x == "--config")]  # fmt: skip
    assert all((ROOT / c).is_file() for c in named), named
    assert f"configs/tables/{path.name}" in (ROOT / "README.md").read_text(encoding="utf-8")  # its one command


def _shards(tmp_path: Path, splits: dict[str, str] | None = None) -> Path:
    """The demo shards linked into ``tmp_path``; ``splits`` adds card splits reading existing shards."""
    out = tmp_path / "shards"
    out.mkdir()
    card = json.loads((DEMO_SHARDS / "card.json").read_text())
    for name in [n for names in card["shards"].values() for n in names]:
        (out / name).symlink_to(DEMO_SHARDS / name)
    for new, old in (splits or {}).items():
        card["shards"][new] = list(card["shards"][old])
        card["num_samples"][new] = card["num_samples"][old]
    (out / "card.json").write_text(json.dumps(card))
    return out


def _run(tmp_path: Path, table: str, *args: str) -> tuple[Path, str]:
    out = tmp_path / "out"
    code = main(["--table", str(ROOT / "configs" / "tables" / table), "--out", str(out), "--in-process", *args])
    assert code == 0
    return out, (out / "table.md").read_text(encoding="utf-8")


def _row(markdown: str, label: str) -> list[str]:
    line = next(x for x in markdown.splitlines() if x.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_paper004_table2_slice(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    shards = _shards(tmp_path, {"test1": "test", "test2": "val"})
    out, md = _run(tmp_path, "paper004_table2.yaml", "--only", "supervision=H CE,P KLD",
                   "--config", str(DEBUG / "tiny.yaml"), "--data.shards", str(shards),
                   "--data.label_source", "primary", "--data.test_split", "[test1, test2]", *FAST)  # fmt: skip
    header = next(x for x in md.splitlines() if x.startswith("| |"))
    assert "Macro-F1 [%] ↑ Test1" in header
    assert "JSD [nats] ↓ Test2" in header
    summary = json.loads((out / "supervision-H_CE" / "summary.json").read_text())
    jsd = summary["metrics"]["test/test2/jsd_nats"]["mean"]
    cells = dict(zip([h.strip() for h in header.strip("|").split("|")][1:], _row(md, "H CE"), strict=True))
    assert cells["JSD [nats] ↓ Test2"] == f"{jsd:.3f}"
    assert all(v != "n/a" for v in _row(md, "P KLD"))
    assert set(_row(md, "MH KLD")) == {"n/a"}  # not in the slice
    config = (out / "supervision-H_CE" / "fold0_seed0" / "config.yaml").read_text()
    assert "categorical_loss: ce" in config
    assert "hard_target: neutral_guard" in config


def test_paper000_table2_slice_with_and_without_dime(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    shards = _shards(tmp_path)
    index = build_dime_index(shards)
    overlay = tmp_path / "dime.yaml"
    overlay.write_text(
        "data:\n  augment:\n    class_path: ser_lightning.data.dime.mixer.DimeMixer\n"
        f"    init_args: {{index_dir: {index}, amount: deficit, ratio: 0.3, k: 3}}\n"
    )
    out, md = _run(tmp_path, "paper000_table2.yaml", "--only", "annot=H",
                   "--config", str(DEBUG / "tiny_qwen2_audio.yaml"), "--config", str(overlay),
                   "--data.shards", str(shards), *FAST)  # fmt: skip
    assert "JS [bits] ↓ H" in md
    assert "BC ↑ C" in md
    for row in ("w/ Aug.", "w/o Aug."):
        values = _row(md, row)
        assert values[0] != "n/a"
        assert values[3] != "n/a"
        assert values[1] == values[2] == "n/a"  # S and C were not run
    with_aug = (out / "aug-w_Aug.__annot-H" / "fold0_seed0" / "config.yaml").read_text()
    without = (out / "aug-w_o_Aug.__annot-H" / "fold0_seed0" / "config.yaml").read_text()
    assert "DimeMixer" in with_aug
    assert "DimeMixer" not in without
    assert json.loads((out / "protocol.json").read_text())["run_folds"] == [0]


def test_paper002_tables_slice(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out, md = _run(tmp_path, "paper002_tables1_4.yaml", "--folds", "2", "--run-folds", "0", "--seeds", "1",
                   "--config", str(DEBUG / "tiny.yaml"), "--config", str(DEBUG / "tiny_text.yaml"), *FAST)  # fmt: skip
    assert "| Audio (P_A) |" in md
    assert "R² ↑" in md
    assert "W-F1 ↑" in md
    assert all(v != "n/a" for v in _row(md, "Text (P_T)"))
    assert all(v != "n/a" and not v.startswith("Δ") for v in _row(md, "AmbER²"))
    assert "Δ% JS [bits] ↓" in md
    assert _row(md, "Baseline (A+T)")[-1] == "+0.0%"  # the baseline against itself


def test_paper003_table2_slice(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out, md = _run(tmp_path, "paper003_table2.yaml", "--only", "strategy=w/o TTS,BoN",
                   "--config", str(DEBUG / "tiny_alm.yaml"), "--trainer.limit_test_batches", "1")  # fmt: skip
    assert "| w/o TTS |" in md
    assert "Δ% JS [bits] ↓" in md
    assert "valid fraction" in md
    js = _row(md, "BoN")[0]
    assert js != "n/a" or "n/a" in _row(md, "BoN")[-1]  # a tiny random ALM may give no valid answer at all
    assert not (out / "strategy-BoN" / "fold0_seed0" / "checkpoints").exists()  # test only: nothing trained
