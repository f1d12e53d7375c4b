"""Readers of original corpus files that yield :class:`UtteranceRecord` objects."""

from ser_lightning.corpora.record import ReadReport, UtteranceRecord

__all__ = ["ReadReport", "UtteranceRecord"]
