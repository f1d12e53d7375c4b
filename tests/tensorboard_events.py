"""Reading a run's TensorBoard scalars back in tests (import by name: ``tests/`` is on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(run_dir: Path, tag: str) -> dict[int, float]:
    """``{step: value}`` of a tag over every events file of the run directory (a resumed run adds one)."""
    out: dict[int, float] = {}
    for events_file in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        events = EventAccumulator(str(events_file))
        events.Reload()
        if tag in events.Tags()["scalars"]:
            out.update({e.step: e.value for e in events.Scalars(tag)})
    return out
