"""Evaluation outputs of a checkpoint go to its run directory, ``<stage>-<k>``, the same on every rank."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonargparse import Namespace

from ser_lightning.runs.names import FIT_COMPLETE
from ser_lightning.runs.run_dirs import (
    STAGE_DIR_ENV,
    find_last,
    first_free,
    mark_fit_complete,
    place_stage_outputs,
    resolve_last,
    run_directory,
)

TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"


def config(ckpt: str | None, version: object = None, logger: object = "tb") -> Namespace:
    if logger == "tb":
        logger = Namespace(class_path=TENSORBOARD, init_args=Namespace(save_dir="runs", name="other", version=version))
    return Namespace(ckpt_path=ckpt, trainer=Namespace(logger=logger, default_root_dir=None))


@pytest.fixture(autouse=True)
def rank_zero(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", STAGE_DIR_ENV):
        monkeypatch.delenv(name, raising=False)


def test_run_directory_is_the_parent_of_checkpoints():
    assert run_directory("runs/demo/version_3/checkpoints/best.ckpt") == Path("runs/demo/version_3")
    assert run_directory("elsewhere/model.ckpt") is None
    assert run_directory("last") is None


def test_first_free_skips_taken_numbers(tmp_path):
    assert first_free(tmp_path, "test") == tmp_path / "test-0"
    (tmp_path / "test-0").mkdir()
    (tmp_path / "test-2").mkdir()
    assert first_free(tmp_path, "test") == tmp_path / "test-1"
    assert first_free(tmp_path, "predict") == tmp_path / "predict-0"


def test_the_logger_points_into_the_checkpoints_run(tmp_path):
    ckpt = tmp_path / "runs" / "demo" / "version_3" / "checkpoints" / "last.ckpt"
    (ckpt.parent.parent / "test-0").mkdir(parents=True)
    cfg = config(str(ckpt))
    assert place_stage_outputs("test", cfg) == ckpt.parent.parent / "test-1"
    init = cfg.trainer.logger.init_args
    # TensorBoardLogger.log_dir = save_dir / name / version
    assert Path(init.save_dir, init.name, init.version) == tmp_path / "runs" / "demo" / "version_3" / "test-1"


def test_without_logger_the_root_directory_moves(tmp_path):
    ckpt = tmp_path / "r" / "version_0" / "checkpoints" / "x.ckpt"
    cfg = config(str(ckpt), logger=False)
    assert place_stage_outputs("validate", cfg) == ckpt.parent.parent / "validate-0"
    assert cfg.trainer.default_root_dir == str(ckpt.parent.parent / "validate-0")


@pytest.mark.parametrize(
    "cfg",
    [
        config("elsewhere/model.ckpt"),  # no run layout: today's behaviour
        config("runs/demo/version_0/checkpoints/x.ckpt", version="mine"),  # the user chose the directory
        config("runs/demo/version_0/checkpoints/x.ckpt", logger=True),  # Lightning's default logger: no version
        config(None),
    ],
)
def test_left_alone(cfg):
    before = cfg.clone()
    assert place_stage_outputs("test", cfg) is None
    assert cfg == before


def test_a_launched_rank_takes_rank_zeros_choice(tmp_path, monkeypatch):
    ckpt = tmp_path / "demo" / "version_0" / "checkpoints" / "x.ckpt"
    chosen = place_stage_outputs("test", config(str(ckpt)))  # rank 0 records its choice in the environment
    assert chosen == ckpt.parent.parent / "test-0"
    chosen.mkdir(parents=True)  # rank 0 has started writing before rank 1 looks
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert place_stage_outputs("test", config(str(ckpt))) == chosen
    assert place_stage_outputs("predict", config(str(ckpt))) == ckpt.parent.parent / "predict-0"  # other stage
    monkeypatch.setenv("LOCAL_RANK", "0")  # rank 0 of a second run picks afresh
    assert place_stage_outputs("test", config(str(ckpt))) == ckpt.parent.parent / "test-1"


def _run(root: Path, version: str, finished: bool) -> Path:
    last = root / "name" / version / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"x")
    if finished:
        mark_fit_complete(last.parent.parent, epochs=3, global_step=30)
    return last


def _fit_config(root: Path, ckpt_path: str) -> Namespace:
    init = Namespace(save_dir=str(root), name="name", version=None)
    logger = Namespace(class_path=TENSORBOARD, init_args=init)
    return Namespace(ckpt_path=ckpt_path, trainer=Namespace(logger=logger, default_root_dir=None),
                     checkpoint=Namespace(dirpath=None))  # fmt: skip


def test_ckpt_path_auto_resumes_an_interrupted_run_and_skips_finished_ones(tmp_path):
    config = _fit_config(tmp_path, "auto")
    resolve_last(config)
    assert config["ckpt_path"] is None  # nothing to resume: a new run
    interrupted = _run(tmp_path, "version_0", finished=False)
    _run(tmp_path, "version_1", finished=True)  # newer, but its fit finished
    config = _fit_config(tmp_path, "auto")
    resolve_last(config)
    assert config["ckpt_path"] == str(interrupted)
    assert config["trainer.logger.init_args.version"] == "version_0"  # resumed in its own directory
    assert json.loads((tmp_path / "name" / "version_1" / FIT_COMPLETE).read_text())["global_step"] == 30
    config = _fit_config(tmp_path, "last")  # last: the newest last.ckpt, finished or not
    resolve_last(config)
    assert config["ckpt_path"].endswith("version_1/checkpoints/last.ckpt")


def test_ckpt_path_last_without_a_checkpoint_still_refuses(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        resolve_last(_fit_config(tmp_path, "last"))
    assert find_last(tmp_path, "name", unfinished=True) is None
