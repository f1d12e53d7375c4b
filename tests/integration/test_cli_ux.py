"""What a user sees from ``train.py``: a quiet console, evaluation outputs next to the checkpoint, one-line errors.

Runs the tiny demo (configs/demo.yaml + the debug overlays its header names) through ``main``.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from cli_fixtures import TINY_DEMO
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ser_lightning.cli.train import main

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEMO = [
    *TINY_DEMO,
    "--data.shards",
    str(ROOT / "shards" / "demo"),
    "--trainer.max_epochs",
    "1",
]
# the messages the CLI silences (as pyproject's pytest filterwarnings does for the suite)
KNOWN = ("LeafSpec", "IterableDataset", "in eval mode", "key_padding_mask", "dirpath has changed")


def run_args(save_dir: Path) -> list[str]:
    return [*DEMO, "--trainer.logger.init_args.save_dir", str(save_dir), "--trainer.default_root_dir", str(save_dir)]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _scalars(run_dir: Path, tag: str) -> list[float]:
    values: list[float] = []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path))
        events.Reload()
        if tag in events.Tags()["scalars"]:
            values += [e.value for e in events.Scalars(tag)]
    return values


def test_a_demo_fit_is_quiet_and_logs_the_best_val_js_as_hp_metric(tmp_path, recwarn, capsys):
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    records = _Records()
    rank_zero.addHandler(records)
    try:
        main([
            "fit", *run_args(tmp_path),
            "--trainer.enable_progress_bar", "true",
            "--model.init_args.text_encoder.init_args.freeze", "true",  # frozen modules in eval mode
            "--test_after_fit", "true",
        ])  # fmt: skip
    finally:
        rank_zero.removeHandler(records)
    shown = [str(w.message) for w in recwarn]
    assert not [m for m in shown if any(k in m for k in KNOWN)], shown
    assert any("GPU available" in m for m in records.messages)  # the handler saw Lightning's info lines
    assert not [m for m in records.messages if "litlogger" in m]
    out = capsys.readouterr().out
    assert "train/loss" in out  # the progress bar was drawn
    assert "v_num" not in out

    run_dir = tmp_path / "demo" / "version_0"
    best = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    best_js = float(best.stem.split("-js")[1])  # the file name holds val/js to 4 decimals
    assert _scalars(run_dir, "hp_metric") == [pytest.approx(best_js, abs=1e-4)]  # no -1 placeholder
    assert _scalars(run_dir, "lr-AdamW/heads")  # named parameter groups, not pg1 / pg2
    assert not _scalars(run_dir, "lr-AdamW/pg1")

    tested = json.loads((run_dir / "test_metrics.json").read_text())  # test_after_fit: in the run directory
    assert tested["units"] == {"js": "bits", "jsd_nats": "nats", "kl": "nats", "entropy": "nats"}
    assert {"test/js", "test/kl"} <= tested.keys()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> Path:
    """A tiny demo fit: ``<save_dir>/demo/version_0/checkpoints/last.ckpt``."""
    save_dir = tmp_path_factory.mktemp("runs")
    main(["fit", *run_args(save_dir), "--test_after_fit", "false"])
    ckpt = save_dir / "demo" / "version_0" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt


def test_evaluating_a_checkpoint_writes_into_its_run_directory(fitted, recwarn, caplog):
    run_dir = fitted.parent.parent
    save_dir = run_dir.parent.parent
    args = [*run_args(save_dir), "--ckpt_path", str(fitted)]
    with caplog.at_level(logging.WARNING, logger="ser_lightning.cli.train"):
        main(["test", *args])
        main(["test", *args])
        main(["validate", *args])
        main(["predict", *args])
    assert sorted(p.name for p in (save_dir / "demo").iterdir()) == ["version_0"]  # no new version_M
    for stage, k in (("test", 0), ("test", 1), ("validate", 0)):
        metrics = json.loads((run_dir / f"{stage}-{k}" / f"{stage}_metrics.json").read_text())
        assert metrics["checkpoint"] == str(fitted)
        assert metrics["units"] == {"js": "bits", "jsd_nats": "nats", "kl": "nats", "entropy": "nats"}
    assert (run_dir / "test-0" / "test_predictions.jsonl").is_file()
    assert not (run_dir / "test_metrics.json").exists()  # the fit's own directory is left alone
    lines = (run_dir / "predict-0" / "predictions.jsonl").read_text().splitlines()
    assert lines
    assert {"id", "classes", "probabilities", "entropy"} <= json.loads(lines[0]).keys()
    said = caplog.text
    for stage, k in (("test", 0), ("test", 1), ("validate", 0), ("predict", 0)):
        assert f"{stage} outputs in {run_dir / f'{stage}-{k}'}" in said
    assert not [str(w.message) for w in recwarn if "dirpath has changed" in str(w.message)]


def test_a_checkpoint_outside_a_run_directory_keeps_a_new_version_and_says_where(fitted, tmp_path, caplog):
    loose = tmp_path / "model.ckpt"
    shutil.copy(fitted, loose)
    with caplog.at_level(logging.WARNING, logger="ser_lightning.cli.train"):
        main(["test", *run_args(tmp_path / "runs"), "--ckpt_path", str(loose)])
    out_dir = tmp_path / "runs" / "demo" / "version_0"
    assert (out_dir / "test_metrics.json").is_file()
    assert f"test outputs in {out_dir}" in caplog.text


def test_an_explicit_logger_version_wins(fitted, tmp_path):
    before = sorted(p.name for p in fitted.parent.parent.iterdir())
    main(["test", *run_args(tmp_path), "--trainer.logger.init_args.version", "mine", "--ckpt_path", str(fitted)])
    assert (tmp_path / "demo" / "mine" / "test_metrics.json").is_file()
    assert sorted(p.name for p in fitted.parent.parent.iterdir()) == before


def test_a_hub_model_missing_offline_is_one_line_and_exit_status_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: patch it too
    key = "model.init_args.text_encoder.init_args.model"
    demo_pretrained_text = [*DEMO[:4], *DEMO[6:]]  # without debug/tiny_text.yaml: the demo's pretrained encoder
    args = [*demo_pretrained_text, "--trainer.logger.init_args.save_dir", str(tmp_path), f"--{key}", "some/unknown"]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    expected = (
        "could not load 'some/unknown' (text encoder): no network here and not in the Hugging Face cache; "
        f"pass a local directory instead, e.g. --{key} /path/to/model"
    )
    assert expected in err.splitlines()
    assert "Namespace(" not in err
    assert "Traceback" not in err
    assert not (tmp_path / "demo").exists()


def test_the_hp_metric_is_the_best_checkpoint_score(fitted):
    state = torch.load(fitted, map_location="cpu", weights_only=False)
    scores = [s["best_model_score"] for k, s in state["callbacks"].items() if k.startswith("FiniteModelCheckpoint")]
    assert _scalars(fitted.parent.parent, "hp_metric") == [pytest.approx(float(scores[0]), abs=1e-6)]
    assert len(list(fitted.parent.parent.glob("events.out.tfevents.*"))) == 1  # logged before the writer closed
