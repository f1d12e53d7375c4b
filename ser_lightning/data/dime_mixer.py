"""Re-export of :mod:`ser_lightning.data.dime.mixer`, the ``class_path`` the README's ``data.augment`` names."""

from ser_lightning.data.dime.mixer import DimeMixer

__all__ = ["DimeMixer"]
