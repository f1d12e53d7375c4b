"""Write ``predictions.jsonl`` from ``predict``: one line per utterance, every rank's share merged."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from ser_lightning.runs.names import PREDICTIONS


class PredictionWriter(BasePredictionWriter):
    """Streams predictions to ``predictions.rank<R>.jsonl`` and merges them into ``predictions.jsonl`` on rank 0.

    Each line holds ``id``, ``classes``, ``probabilities`` (aligned with ``classes``) and ``entropy`` (nats).

    Args:
        output_path: the merged file; by default ``predictions.jsonl`` in the run's log directory.
    """

    def __init__(self, output_path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_path = output_path
        self._handle: Any = None
        self._target = Path(PREDICTIONS)

    def _part(self, rank: int) -> Path:
        return self._target.with_name(f"{self._target.stem}.rank{rank}.jsonl")

    def target(self, log_dir: str | Path) -> Path:
        """The merged file: ``output_path``, else ``predictions.jsonl`` in ``log_dir``."""
        return Path(self.output_path or Path(log_dir) / PREDICTIONS)

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Resolve the output file (trainer.log_dir is collective under DDP) and open this rank's part."""
        self._target = self.target(trainer.log_dir or trainer.default_root_dir)
        part = self._part(trainer.global_rank)
        part.parent.mkdir(parents=True, exist_ok=True)
        self._handle = part.open("w", encoding="utf-8")

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Sequence[dict[str, Any]],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Append one JSON line per utterance of the batch."""
        for record in prediction:
            self._handle.write(json.dumps(record) + "\n")

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Close the part file; rank 0 merges all parts, sorted by id, once every rank is done."""
        self._handle.close()
        trainer.strategy.barrier("predictions")
        if trainer.global_rank != 0:
            return
        lines = []
        for rank in range(trainer.world_size):
            part = self._part(rank)
            lines.extend(part.read_text(encoding="utf-8").splitlines())
            part.unlink()
        lines.sort(key=lambda line: json.loads(line)["id"])
        self._target.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
