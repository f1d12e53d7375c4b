"""``EpochDataLoader``: the DataLoader of the training stream, which hands it the epoch and its resume point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import DataLoader


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
