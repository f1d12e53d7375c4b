"""Prediction from a checkpoint alone: :func:`load_model` -> :class:`Predictor`, and the inputs it reads.

``ser_lightning.load_model`` is :func:`load_model`; ``ser-predict`` (:mod:`ser_lightning.cli.predict`) is its
command line.
"""

from ser_lightning.inference.inputs import InputError, Item, array_items, find_inputs, read_manifest
from ser_lightning.inference.predictor import Predictor, load_model, resolve_device

__all__ = [
    "InputError",
    "Item",
    "Predictor",
    "array_items",
    "find_inputs",
    "load_model",
    "read_manifest",
    "resolve_device",
]
