"""Run directories: where evaluations of a checkpoint write, where checkpoints go, and which ``last.ckpt`` resumes.

Evaluations: ``validate`` / ``test`` / ``predict`` with ``--ckpt_path`` write next to the checkpoint, in
``<stage>-<k>/``. Lightning alone opens a new ``runs/<name>/version_M`` for every evaluation of an old checkpoint,
so the metrics end up far from the run they score. For a checkpoint inside a run layout
(``runs/<name>/version_N/checkpoints/x.ckpt``) :func:`place_stage_outputs` points the logger at
``runs/<name>/version_N/<stage>-<k>`` (``k`` the first free number), so ``{stage}_metrics.json``,
``test_predictions.jsonl`` and ``predictions.jsonl`` land there. It runs before the trainer is built; under
DDP every rank must agree: ranks started by Lightning's launcher inherit rank 0's choice through
:data:`STAGE_DIR_ENV`, and ranks started side by side (torchrun) all look before rank 0 can create the
directory (it writes only after the process group, which needs every rank, is up).

Resuming: Lightning's ``ckpt_path="last"`` only looks in the checkpoint directory of the new run it is about to open
(a fresh ``version_N``), finds nothing and trains from scratch with a warning. :func:`resolve_last` finds the newest
``last.ckpt`` of the same run name instead, and the CLI logs into that version's directory.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ser_lightning.runs.names import CHECKPOINT_DIR, FIT_COMPLETE, LAST_CHECKPOINT

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger(__name__)

STAGE_DIR_ENV = "SER_LIGHTNING_STAGE_DIR"  # "<stage>\t<checkpoint>\t<directory>", set by rank 0
LIGHTNING_CKPT_WORDS = ("best", "last", "hpc", "registry")  # ckpt_path values that are not a file


def run_directory(ckpt_path: str | Path) -> Path | None:
    """``runs/<name>/version_N`` for ``runs/<name>/version_N/checkpoints/x.ckpt``; ``None`` outside that layout."""
    path = Path(ckpt_path)
    if str(ckpt_path) in LIGHTNING_CKPT_WORDS or path.parent.name != CHECKPOINT_DIR:
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


def checkpoint_dir(trainer: L.Trainer) -> Path:
    """The first ``ModelCheckpoint``'s directory, else ``<log_dir or default_root_dir>/checkpoints``."""
    callback = trainer.checkpoint_callback
    dirpath = getattr(callback, "dirpath", None)
    if dirpath:
        return Path(dirpath)
    return Path(trainer.log_dir or trainer.default_root_dir) / CHECKPOINT_DIR


def find_last(
    save_dir: str | Path, name: str, version: str | int | None = None, unfinished: bool = False
) -> Path | None:
    """Newest ``save_dir/name/<version>/checkpoints/last.ckpt`` (by modification time), or ``None``.

    ``version``: only that version (an int ``N`` means ``version_N``); ``None``: every version of the run name.
    ``unfinished``: only runs whose fit did not finish (no :data:`~ser_lightning.runs.names.FIT_COMPLETE`).
    """
    root = Path(save_dir) / name
    if version is None:
        found = [p for p in root.glob(f"*/{CHECKPOINT_DIR}/{LAST_CHECKPOINT}") if p.is_file()]
    else:
        folder = version if isinstance(version, str) else f"version_{version}"
        found = [p for p in [root / folder / CHECKPOINT_DIR / LAST_CHECKPOINT] if p.is_file()]
    if unfinished:
        found = [p for p in found if not (p.parent.parent / FIT_COMPLETE).is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def mark_fit_complete(run_dir: str | Path, epochs: int, global_step: int) -> Path:
    """Write :data:`~ser_lightning.runs.names.FIT_COMPLETE` into a run directory: ``--ckpt_path auto`` skips it."""
    path = Path(run_dir) / FIT_COMPLETE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"epochs": epochs, "global_step": global_step}) + "\n", encoding="utf-8")
    return path


def resolve_last(config: Any) -> None:
    """Point a ``fit`` config with ``ckpt_path: last`` or ``auto`` at a ``last.ckpt`` and log into its version.

    ``last``: the run name's newest ``last.ckpt``; ``FileNotFoundError`` when there is none (asked to resume, a run
    must not silently start from scratch). ``auto``: the newest ``last.ckpt`` of an interrupted run of the name
    (its fit did not finish), else a new run; logged either way. The command a scheduler re-runs after a requeue
    is then the same as the first one. ``config``: the fit subcommand's namespace (``ckpt_path``, ``trainer``,
    ``checkpoint``). With an explicit ``checkpoint.dirpath`` the ``last.ckpt`` there is used.
    """
    mode = config.get("ckpt_path")
    if mode not in ("last", "auto"):
        return
    auto = mode == "auto"
    dirpath = config.get("checkpoint.dirpath")
    if dirpath:
        path = Path(dirpath) / LAST_CHECKPOINT
        if auto and (not path.is_file() or (path.parent.parent / FIT_COMPLETE).is_file()):
            config["ckpt_path"] = None
            _say("--ckpt_path auto: no interrupted run in %s: starting a new run", dirpath)
            return
        if not path.is_file():
            raise FileNotFoundError(f"--ckpt_path last: no {path} (checkpoint.dirpath); nothing to resume")
        config["ckpt_path"] = str(path)
        _say("--ckpt_path %s: resuming %s", mode, path)
        return
    logger = config.get("trainer.logger")
    root = config.get("trainer.default_root_dir") or "."
    if logger is True:  # Lightning's default TensorBoardLogger; its version cannot be set from here
        save_dir, name, version, init = root, "lightning_logs", None, None
    elif (init := logger_init_args(logger)) is not None:
        save_dir, name, version = init.get("save_dir") or ".", init.get("name") or "", init.get("version")
    else:  # no logger: checkpoints go to default_root_dir/checkpoints
        path = Path(root) / CHECKPOINT_DIR / LAST_CHECKPOINT
        if auto and (not path.is_file() or (Path(root) / FIT_COMPLETE).is_file()):
            config["ckpt_path"] = None
            _say("--ckpt_path auto: no interrupted run in %s: starting a new run", root)
            return
        if not path.is_file():
            raise FileNotFoundError(f"--ckpt_path last: no {path}; nothing to resume")
        config["ckpt_path"] = str(path)
        return
    path = find_last(save_dir, name, version, unfinished=auto)
    if path is None and auto:
        config["ckpt_path"] = None
        _say("--ckpt_path auto: no interrupted run of %r in %s: starting a new run", name, save_dir)
        return
    if path is None:
        where = Path(save_dir) / name / ("*" if version is None else str(version)) / CHECKPOINT_DIR / LAST_CHECKPOINT
        raise FileNotFoundError(
            f"--ckpt_path last: no {where} for run name {name!r}; nothing to resume "
            "(drop --ckpt_path to start a new run, or pass the checkpoint's path)"
        )
    config["ckpt_path"] = str(path)
    if init is not None:
        init["version"] = path.parent.parent.name  # log into the resumed run's directory, not a new version_N
    _say("--ckpt_path %s: resuming %s (run directory %s)", mode, path, path.parent.parent)


def logger_init_args(logger: Any) -> Any | None:
    """The ``init_args`` of a configured logger with ``save_dir`` and ``name`` (TensorBoard, CSV), else ``None``."""
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    if logger is None or isinstance(logger, bool):
        return None
    init = logger.get("init_args") if hasattr(logger, "get") else None
    if init is None or "save_dir" not in init or "name" not in init:
        return None
    return init


def _say(message: str, *args: Any) -> None:
    """A warning-level line from global rank 0 only (every rank resolves the same resume point)."""
    if _env_rank() == 0:
        log.warning(message, *args)
