"""``EpochDataLoader``: the DataLoader of the training stream, which hands it the epoch and its resume point.

Beside it: where the trainer's loops say a (resumed) stream stands, and the loader workers' signal policy.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

from torch.utils.data import DataLoader

# signals a whole job receives (Slurm's pre-emption notice USR1/USR2, the time limit's TERM, Ctrl-C's INT)
WORKER_IGNORED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` of every loader: stop signals are the main process's to handle, not its workers'.

    Slurm signals every process of a job step, and a terminal's Ctrl-C its whole process group: a worker killed by
    the signal made the main process fail with a "DataLoader worker ... killed by signal" traceback per worker. The
    main process saves ``last.ckpt`` and stops; it shuts its workers down (and they exit when it is gone).
    """
    for signum in WORKER_IGNORED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def trainer_epoch(trainer: Any) -> int | None:
    """The epoch Lightning hands samplers (``None`` without a trainer).

    On resuming an end-of-epoch checkpoint ``current_epoch`` still lags by one; the processed count does not.
    """
    return None if trainer is None else trainer.fit_loop.epoch_progress.current.processed


def train_position(trainer: Any) -> tuple[int, int]:
    """(epoch, its batches trained so far) where a resumed run's stream goes on; the next epoch once one ends."""
    if trainer is None:
        return 0, 0
    loop = trainer.fit_loop
    epoch = max(0, loop.epoch_progress.current.ready - 1)  # ready counts epochs started, at every save point
    if loop.epoch_loop.batch_progress.is_last_batch:  # saved at the epoch's end (validation, epoch end hooks)
        return epoch + 1, 0
    return epoch, loop.epoch_loop.batch_progress.current.processed


# Lightning hands the epoch only to samplers, which an IterableDataset has none of; this loader does it
class EpochDataLoader(DataLoader):
    """A DataLoader that hands its dataset the epoch before each pass.

    Lightning calls ``set_epoch`` only on samplers, which an ``IterableDataset`` cannot have; this loader
    calls ``dataset.set_epoch(epoch_fn())`` (the trainer's current epoch) in ``__iter__`` instead, or the
    number of earlier passes without a trainer. Workers are started afresh for each pass
    (``persistent_workers=False``) so they receive the new epoch.

    Stateful for Lightning (``state_dict`` / ``load_state_dict``, saved in every checkpoint): the state is
    ``position_fn()``, the epoch the stream is in and the batches of it trained so far. The first pass after
    ``load_state_dict`` follows that epoch (not ``epoch_fn``, which Lightning has not advanced yet when it
    resumes from an end-of-epoch checkpoint) and calls ``dataset.resume(batches)`` (the stream replays and drops
    them), so a run resumed mid-epoch continues at the sample where it stopped.

    Args:
        dataset: an iterable dataset with ``set_epoch(int)`` (and ``resume(int)`` to resume mid-epoch).
        epoch_fn: returns the current epoch, or ``None`` to fall back to counting passes.
        position_fn: returns ``(epoch, batches of it trained so far)`` (saved by ``state_dict``).
        **kwargs: passed to :class:`torch.utils.data.DataLoader`.
    """

    def __init__(
        self,
        dataset: Any,
        epoch_fn: Callable[[], int | None] | None = None,
        position_fn: Callable[[], tuple[int, int]] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("persistent_workers"):
            raise ValueError("EpochDataLoader needs persistent_workers=False to hand each pass its epoch")
        super().__init__(dataset, **kwargs)
        self.epoch_fn = epoch_fn
        self.position_fn = position_fn
        self.passes = 0
        self.epoch = 0
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> Any:
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        skip = 0
        if self._resume is not None:  # first pass after a restart: the saved position
            epoch, skip = self._resume["epoch"], self._resume["batches"]
            self._resume = None
        self.epoch = self.passes if epoch is None else epoch
        self.dataset.set_epoch(self.epoch)
        if hasattr(self.dataset, "resume"):
            self.dataset.resume(skip)
        self.passes += 1
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        """The epoch of the stream and the batches of it trained so far (what a resumed run skips)."""
        epoch, batches = self.position_fn() if self.position_fn is not None else (self.epoch, 0)
        return {"epoch": int(epoch), "batches": int(batches)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next pass follows the saved epoch and continues after the saved number of batches."""
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
