"""Re-export of :mod:`ser_lightning.data.stream.datamodule`, the path configs and scripts name."""

from ser_lightning.data.stream.datamodule import EpochDataLoader, SERDataModule

__all__ = ["EpochDataLoader", "SERDataModule"]
