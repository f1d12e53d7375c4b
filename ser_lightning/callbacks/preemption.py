"""Pre-emption-safe ``fit``: on a stop signal or a pre-emption notice, ``last.ckpt`` at the current step, then stop.

Lightning 2.6 alone, on SIGTERM, finishes the current batch and raises ``SIGTERMException``, a ``SystemExit``
without a code: the process exits with status 0 and saves nothing. On SIGINT it raises ``KeyboardInterrupt``
wherever the main thread is (possibly between backward and optimizer step). Under Slurm its ``SLURMEnvironment``
answers the pre-emption notice (SIGUSR1) by saving ``hpc_ckpt_N.ckpt`` into the working directory and requeueing;
the requeued job then resumes into a new ``version_N``, so the best checkpoint of the epochs before is forgotten.

:class:`PreemptionCheckpoint` owns these signals instead (the CLI switches Lightning's Slurm handler off with
``SLURMEnvironment(auto_requeue=False)``), because it can put the checkpoint where ``--ckpt_path auto`` finds it
and resume in the same run directory:

- SIGTERM / SIGINT (a time limit, ``scancel``, Ctrl-C) and the notice signals (``SER_LIGHTNING_PREEMPT_SIGNALS``,
  default ``USR1,USR2``: what ``#SBATCH --signal=USR1@90`` sends) only set a flag (a handler does no I/O and no
  collective); after each training batch the ranks take one decision on it (an all-reduce under DDP: a signal on
  any rank stops all), so every rank stops at the same step and the checkpoint's barrier meets on all of them;
- the stop saves ``last.ckpt`` into the run's checkpoint directory (mid-epoch resume included);
- after a notice, global rank 0 asks Slurm to requeue the job (``scontrol requeue``; a job submitted without
  ``--requeue`` is refused by Slurm, which is logged);
- :func:`exit_status` turns the stop into exit status 128 + signal number (143 SIGTERM, 130 SIGINT, 138 SIGUSR1).

The loader workers ignore these signals (``data.stream.loader.ignore_stop_signals``): the main process stops them.
Resuming is :func:`ser_lightning.runs.run_dirs.resolve_last` (``--ckpt_path last`` / ``auto``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ser_lightning.runs.names import LAST_CHECKPOINT
from ser_lightning.runs.run_dirs import checkpoint_dir

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
NOTICE_SIGNALS_ENV = "SER_LIGHTNING_PREEMPT_SIGNALS"  # comma-separated names, e.g. "USR1" or "USR1,USR2"
DEFAULT_NOTICE = "USR1,USR2"
REQUEUE_TIMEOUT = 60  # seconds scontrol may take


class Preempted(SystemExit):
    """Training stopped by a signal after saving ``last.ckpt``; its code is 128 + the signal number."""


def notice_signals(names: str | None = None) -> tuple[signal.Signals, ...]:
    """The pre-emption notice signals: ``names`` (``"USR1,USR2"``), else :data:`NOTICE_SIGNALS_ENV`, else both USR."""
    text = names if names is not None else os.environ.get(NOTICE_SIGNALS_ENV, DEFAULT_NOTICE)
    found = []
    for name in (n.strip().upper().removeprefix("SIG") for n in text.split(",") if n.strip()):
        try:
            found.append(signal.Signals[f"SIG{name}"])
        except KeyError:
            raise ValueError(f"{NOTICE_SIGNALS_ENV}: unknown signal {name!r}") from None
    return tuple(found)


def slurm_job_id() -> str | None:
    """The Slurm job to requeue: ``ARRAYJOB_TASK`` for an array task, else ``SLURM_JOB_ID``; ``None`` outside Slurm."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array is not None and os.environ.get("SLURM_ARRAY_TASK_ID") is not None:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class PreemptionCheckpoint(Callback):
    """On a stop signal or a pre-emption notice during ``fit``: finish the batch, save ``last.ckpt``, stop.

    After a notice it also requeues the Slurm job (global rank 0). See the module docstring.

    Args:
        notices: the notice signals; default from :data:`NOTICE_SIGNALS_ENV` (``USR1,USR2``).
    """

    def __init__(self, notices: tuple[signal.Signals, ...] | None = None) -> None:
        self.notices = notice_signals() if notices is None else tuple(notices)
        self.signum: int | None = None
        self.requeued = False

    def _on_signal(self, signum: int, frame: Any) -> None:
        """A signal handler that only notes the first signal (the stop is decided after the batch)."""
        if self.signum is None:
            self.signum = signum

    def _install(self, signums: tuple[int, ...]) -> None:
        with contextlib.suppress(ValueError):  # signal.signal works in the main thread only
            for signum in signums:
                signal.signal(signum, self._on_signal)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Catch the notice signals from the start of a fit (their default action would kill the process)."""
        if stage == "fit":
            self.signum, self.requeued = None, False
            self._install(self.notices)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Take SIGTERM and SIGINT over from Lightning's handlers (installed just before; restored after fit)."""
        self._install((*STOP_SIGNALS, *self.notices))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Stop every rank at this step when a signal came to any (``SIGTERMException``, then :meth:`on_exception`)."""
        signum = self.signum or 0
        if trainer.world_size > 1:  # the highest signal number any rank got (0: none), known to every rank
            local = torch.tensor(signum, dtype=torch.long, device=pl_module.device)
            signum = int(trainer.strategy.reduce(local, reduce_op="max"))
        if signum:
            self.signum = self.signum or signum
            raise SIGTERMException()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Save ``last.ckpt`` at the current step when fit stops because of a signal; requeue after a notice."""
        stopping = isinstance(exception, SIGTERMException) or trainer.received_sigterm
        if not stopping or trainer.state.fn != TrainerFn.FITTING:
            return
        self.signum = self.signum or signal.SIGTERM
        path = checkpoint_dir(trainer) / LAST_CHECKPOINT
        trainer.save_checkpoint(path)
        say = log.warning if trainer.is_global_zero else log.debug  # every rank saves (a barrier), rank 0 says so
        say(
            "%s at global step %d (epoch %d, batch %d of the epoch): saved %s; resume with --ckpt_path auto",
            signal.Signals(self.signum).name,
            trainer.global_step,
            trainer.current_epoch,
            trainer.fit_loop.epoch_loop.batch_progress.current.completed,
            path,
        )
        if self.signum in self.notices and trainer.is_global_zero:
            self.requeued = requeue(slurm_job_id())

    @property
    def exit_code(self) -> int:
        """128 + the signal number, the status a shell reports for a process killed by that signal."""
        return 128 + int(self.signum or signal.SIGTERM)


def requeue(job_id: str | None) -> bool:
    """``scontrol requeue JOB``; whether Slurm accepted it (logged either way, never raises)."""
    if not job_id:
        log.warning("pre-emption notice outside a Slurm job: nothing to requeue")
        return False
    try:
        result = subprocess.run(
            ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=REQUEUE_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("could not requeue Slurm job %s: %s", job_id, err)
        return False
    if result.returncode:
        log.warning("Slurm refused to requeue job %s (submit it with --requeue): %s", job_id, result.stderr.strip())
        return False
    log.warning("requeued Slurm job %s: it resumes from last.ckpt with --ckpt_path auto", job_id)
    return True


@contextlib.contextmanager
def exit_status(callback: PreemptionCheckpoint) -> Iterator[None]:
    """Turn Lightning's code-less ``SIGTERMException`` (exit status 0) into :class:`Preempted` (128 + signal)."""
    try:
        yield
    except SIGTERMException as exn:
        raise Preempted(callback.exit_code) from exn
