"""Synthetic ALM annotators on top of ``alm/``: the annotation plan, the SQLite store, the run, merge and analysis.

``ser-annotate run`` (:func:`run_annotation`) fills the store; ``merge`` and ``analyse`` read it (their
modules import what they need; import them by module to keep this package light).
"""

from ser_lightning.annotate.plan import annotation_plan
from ser_lightning.annotate.run import AnnotationInterrupted, RunSummary, run_annotation
from ser_lightning.annotate.store import AnnotationRow, AnnotationStore

__all__ = [
    "AnnotationInterrupted",
    "AnnotationRow",
    "AnnotationStore",
    "RunSummary",
    "annotation_plan",
    "run_annotation",
]
