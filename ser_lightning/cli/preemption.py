"""Pre-emption-safe ``fit``: a checkpoint and a non-zero exit on SIGTERM / SIGINT; ``--ckpt_path last`` per run name.

Lightning 2.6 alone, on SIGTERM, finishes the current batch and raises ``SIGTERMException``, a ``SystemExit``
without a code: the process exits with status 0 and saves nothing (``OnExceptionCheckpoint`` is not on by
default). On SIGINT it raises ``KeyboardInterrupt`` wherever the main thread is (possibly between backward and
optimizer step). :class:`PreemptionCheckpoint` routes SIGINT through Lightning's SIGTERM path (stop after the
current batch, broadcast to all DDP ranks), writes ``last.ckpt`` into the run's checkpoint directory, and
:func:`exit_status` turns the stop into exit status 128 + signal number (143 SIGTERM, 130 SIGINT), as a shell
reports a process killed by that signal, so schedulers requeue and pipelines stop.

Lightning's ``ckpt_path="last"`` only looks in the checkpoint directory of the new run it is about to open (a
fresh ``version_N``), finds nothing and trains from scratch with a warning. :func:`resolve_last` finds the newest
``last.ckpt`` of the same run name instead, and the CLI logs into that version's directory.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
LAST = ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION  # "last.ckpt"


class Preempted(SystemExit):
    """Training stopped by a signal after saving ``last.ckpt``; its code is 128 + the signal number."""


class PreemptionCheckpoint(Callback):
    """On SIGTERM / SIGINT during ``fit``: finish the current batch, save ``last.ckpt``, then stop.

    SIGTERM is Lightning's own path (``trainer.received_sigterm``, checked after each batch and broadcast to all
    ranks); SIGINT is sent down the same path once training has started, instead of a ``KeyboardInterrupt`` in the
    middle of a step. The checkpoint goes to the first ``ModelCheckpoint``'s directory (``<log_dir>/checkpoints``),
    where ``--ckpt_path last`` finds it; any exception raised while a stop signal is pending (e.g. a DataLoader
    worker killed by the same SIGTERM) also saves it.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Send SIGINT through Lightning's SIGTERM handler (installed before this hook; restored after fit)."""
        self.signum = None
        on_sigterm = signal.getsignal(signal.SIGTERM)
        if not callable(on_sigterm):
            return  # not the main thread, or Windows: Lightning installed nothing to route to

        def on_signal(signum: int, frame: Any) -> None:
            self.signum = signum
            on_sigterm(signum, frame)

        with contextlib.suppress(ValueError):  # signal.signal works in the main thread only
            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Save ``last.ckpt`` at the current step when fit stops because of a signal."""
        stopping = isinstance(exception, SIGTERMException) or trainer.received_sigterm
        if not stopping or trainer.state.fn != TrainerFn.FITTING:
            return
        self.signum = self.signum or signal.SIGTERM
        path = checkpoint_dir(trainer) / LAST
        trainer.save_checkpoint(path)
        log.warning(
            "%s at global step %d (epoch %d, batch %d of the epoch): saved %s; resume with --ckpt_path last",
            signal.Signals(self.signum).name,
            trainer.global_step,
            trainer.current_epoch,
            trainer.fit_loop.epoch_loop.batch_progress.current.completed,
            path,
        )

    @property
    def exit_code(self) -> int:
        """128 + the signal number, the status a shell reports for a process killed by that signal."""
        return 128 + int(self.signum or signal.SIGTERM)


def checkpoint_dir(trainer: L.Trainer) -> Path:
    """The first ``ModelCheckpoint``'s directory, else ``<log_dir or default_root_dir>/checkpoints``."""
    callback = trainer.checkpoint_callback
    dirpath = getattr(callback, "dirpath", None)
    if dirpath:
        return Path(dirpath)
    return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"


@contextlib.contextmanager
def exit_status(callback: PreemptionCheckpoint) -> Iterator[None]:
    """Turn Lightning's code-less ``SIGTERMException`` (exit status 0) into :class:`Preempted` (128 + signal)."""
    try:
        yield
    except SIGTERMException as exn:
        raise Preempted(callback.exit_code) from exn


def find_last(save_dir: str | Path, name: str, version: str | int | None = None) -> Path | None:
    """Newest ``save_dir/name/<version>/checkpoints/last.ckpt`` (by modification time), or ``None``.

    ``version``: only that version (an int ``N`` means ``version_N``); ``None``: every version of the run name.
    """
    root = Path(save_dir) / name
    if version is None:
        found = [p for p in root.glob(f"*/checkpoints/{LAST}") if p.is_file()]
        return max(found, key=lambda p: p.stat().st_mtime) if found else None
    folder = version if isinstance(version, str) else f"version_{version}"
    path = root / folder / "checkpoints" / LAST
    return path if path.is_file() else None


def resolve_last(config: Any) -> None:
    """Point a ``fit`` config with ``ckpt_path: last`` at the run's newest ``last.ckpt`` and log into its version.

    ``config``: the fit subcommand's namespace (``ckpt_path``, ``trainer``, ``checkpoint``). With an explicit
    ``checkpoint.dirpath`` the ``last.ckpt`` there is used. Raises ``FileNotFoundError`` when there is none:
    asked to resume, a run must not silently start from scratch.
    """
    if config.get("ckpt_path") != "last":
        return
    dirpath = config.get("checkpoint.dirpath")
    if dirpath:
        path = Path(dirpath) / LAST
        if not path.is_file():
            raise FileNotFoundError(f"--ckpt_path last: no {path} (checkpoint.dirpath); nothing to resume")
        config["ckpt_path"] = str(path)
        log.warning("--ckpt_path last: resuming %s", path)
        return
    logger = config.get("trainer.logger")
    root = config.get("trainer.default_root_dir") or "."
    if logger is True:  # Lightning's default TensorBoardLogger; its version cannot be set from here
        save_dir, name, version, init = root, "lightning_logs", None, None
    elif (init := logger_init_args(logger)) is not None:
        save_dir, name, version = init.get("save_dir") or ".", init.get("name") or "", init.get("version")
    else:  # no logger: checkpoints go to default_root_dir/checkpoints
        path = Path(root) / "checkpoints" / LAST
        if not path.is_file():
            raise FileNotFoundError(f"--ckpt_path last: no {path}; nothing to resume")
        config["ckpt_path"] = str(path)
        return
    path = find_last(save_dir, name, version)
    if path is None:
        where = Path(save_dir) / name / ("*" if version is None else str(version)) / "checkpoints" / LAST
        raise FileNotFoundError(
            f"--ckpt_path last: no {where} for run name {name!r}; nothing to resume "
            "(drop --ckpt_path to start a new run, or pass the checkpoint's path)"
        )
    config["ckpt_path"] = str(path)
    if init is not None:
        init["version"] = path.parent.parent.name  # log into the resumed run's directory, not a new version_N
    log.warning("--ckpt_path last: resuming %s (run directory %s)", path, path.parent.parent)


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
