"""Pre-emption-safe ``fit``: a checkpoint and a non-zero exit on SIGTERM / SIGINT; ``--ckpt_path last`` per run name.

Lightning 2.6 alone, on SIGTERM, finishes the current batch and raises ``SIGTERMException``, a ``SystemExit``
without a code: the process exits with status 0 and saves nothing (``OnExceptionCheckpoint`` is not on by
default). On SIGINT it raises ``KeyboardInterrupt`` wherever the main thread is (possibly between backward and
optimizer step). :class:`PreemptionCheckpoint` routes SIGINT through Lightning's SIGTERM path (stop after the
current batch, broadcast to all DDP ranks), writes ``last.ckpt`` into the run's checkpoint directory, and
:func:`exit_status` turns the stop into exit status 128 + signal number (143 SIGTERM, 130 SIGINT), as a shell
reports a process killed by that signal, so schedulers requeue and pipelines stop.

Resuming (``--ckpt_path last`` per run name) is :func:`ser_lightning.runs.run_dirs.resolve_last`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ser_lightning.runs.names import LAST_CHECKPOINT
from ser_lightning.runs.run_dirs import checkpoint_dir

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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
        path = checkpoint_dir(trainer) / LAST_CHECKPOINT
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


@contextlib.contextmanager
def exit_status(callback: PreemptionCheckpoint) -> Iterator[None]:
    """Turn Lightning's code-less ``SIGTERMException`` (exit status 0) into :class:`Preempted` (128 + signal)."""
    try:
        yield
    except SIGTERMException as exn:
        raise Preempted(callback.exit_code) from exn
