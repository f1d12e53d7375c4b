"""Where ``validate`` / ``test`` / ``predict`` with ``--ckpt_path`` write: next to the checkpoint, in ``<stage>-<k>/``.

Lightning alone opens a new ``runs/<name>/version_M`` for every evaluation of an old checkpoint, so the
metrics end up far from the run they score. For a checkpoint inside a run layout
(``runs/<name>/version_N/checkpoints/x.ckpt``) :func:`place_stage_outputs` points the logger at
``runs/<name>/version_N/<stage>-<k>`` (``k`` the first free number), so ``{stage}_metrics.json``,
``test_predictions.jsonl`` and ``predictions.jsonl`` land there. It runs before the trainer is built; under
DDP every rank must agree: ranks started by Lightning's launcher inherit rank 0's choice through
:data:`STAGE_DIR_ENV`, and ranks started side by side (torchrun) all look before rank 0 can create the
directory (it writes only after the process group, which needs every rank, is up).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ser_lightning.cli.preemption import logger_init_args

log = logging.getLogger(__name__)

STAGE_DIR_ENV = "SER_LIGHTNING_STAGE_DIR"  # "<stage>\t<checkpoint>\t<directory>", set by rank 0
LIGHTNING_CKPT_WORDS = ("best", "last", "hpc", "registry")  # ckpt_path values that are not a file


def run_directory(ckpt_path: str | Path) -> Path | None:
    """``runs/<name>/version_N`` for ``runs/<name>/version_N/checkpoints/x.ckpt``; ``None`` outside that layout."""
    path = Path(ckpt_path)
    if str(ckpt_path) in LIGHTNING_CKPT_WORDS or path.parent.name != "checkpoints":
        return None
    return path.parent.parent


def first_free(run_dir: Path, stage: str) -> Path:
    """``run_dir/<stage>-<k>`` for the smallest ``k >= 0`` that does not exist yet."""
    k = 0
    while (run_dir / f"{stage}-{k}").exists():
        k += 1
    return run_dir / f"{stage}-{k}"


def place_stage_outputs(stage: str, config: Any) -> Path | None:
    """Point an evaluation config's logger (or root directory) at ``<run>/<stage>-<k>``; return that directory.

    ``config``: the subcommand's namespace (``ckpt_path``, ``trainer``). Leaves the config as it is and returns
    ``None`` when ``ckpt_path`` is not a file in a run layout, or when the logger's version is set explicitly
    (the user chose the directory) or cannot be set (``logger: true``, a logger without ``save_dir``/``name``).
    """
    ckpt_path = config.get("ckpt_path")
    run_dir = run_directory(ckpt_path) if ckpt_path else None
    if run_dir is None:
        return None
    logger = config.get("trainer.logger")
    init = logger_init_args(logger)
    if init is not None and init.get("version") is not None:
        return None
    if init is None and logger not in (None, False):
        return None
    stage_dir = _agreed_stage_dir(stage, Path(ckpt_path), run_dir)
    if init is not None:  # TensorBoard / CSV: log_dir = save_dir / name / version
        init["save_dir"] = str(run_dir.parent.parent)
        init["name"] = run_dir.parent.name
        init["version"] = f"{run_dir.name}/{stage_dir.name}"
    else:  # no logger: trainer.log_dir is default_root_dir
        config["trainer.default_root_dir"] = str(stage_dir)
    return stage_dir


def _agreed_stage_dir(stage: str, ckpt_path: Path, run_dir: Path) -> Path:
    """Rank 0 picks :func:`first_free` and records it; a rank it launched reuses the record."""
    key = f"{stage}\t{ckpt_path.resolve()}\t"
    record = os.environ.get(STAGE_DIR_ENV, "")
    if _env_rank() != 0 and record.startswith(key):
        return Path(record[len(key) :])
    stage_dir = first_free(run_dir, stage)
    os.environ[STAGE_DIR_ENV] = key + str(stage_dir)
    return stage_dir


def _env_rank() -> int:
    """This process's global rank as the launchers set it in the environment (0 when unset)."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        value = os.environ.get(name)
        if value is not None and value.isdigit():
            return int(value)
    return 0

