"""The grid of a ``ser-experiment``: named axes of ``train.py`` arguments whose product is the set of runs' cells.

An axis is a name and its labelled values, each value a list of ``train.py`` arguments (config overlays or key
overrides). ``--grid data.label_source=primary,synthetic`` is the axis ``data.label_source`` with the values
``primary`` -> ``["--data.label_source", "primary"]`` and so on; a table file (:mod:`ser_lightning.runs.tables`)
names its axes and values freely (``aug: {"w/ Aug.": [], "w/o Aug.": ["--data.augment", "null"]}``).

A cell is one label per axis; its runs (folds x seeds) live in ``OUT/<cell directory>/fold{f}_seed{s}/``, the
directory named after the labels (:func:`cell_dir`). Without axes there is one cell, ``OUT`` itself.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


@dataclass(frozen=True)
class Axis:
    """One grid axis: ``values`` maps each label to the ``train.py`` arguments of that value."""

    name: str
    values: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    """One label per axis, in axis order, and the arguments they add to every run of the cell."""

    labels: dict[str, str]
    args: list[str]

    @property
    def name(self) -> str:
        """``axis=label,axis=label`` (empty for the single cell of a grid without axes)."""
        return ",".join(f"{k}={v}" for k, v in self.labels.items())


def parse_grid(spec: str) -> Axis:
    """``KEY=V1,V2,...`` (a ``--grid`` argument) as the axis ``KEY`` with the values ``--KEY V``.

    Raises:
        ValueError: no ``=``, an empty key or value, or a repeated value.
    """
    key, sep, values = spec.partition("=")
    key = key.strip().removeprefix("--")
    labels = [v.strip() for v in values.split(",")]
    if not sep or not key or not all(labels):
        raise ValueError(f"--grid takes KEY=V1,V2,... (e.g. data.label_source=primary,synthetic), got {spec!r}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"--grid {spec!r} repeats a value")
    return Axis(key, {v: [f"--{key}", v] for v in labels})


def axis_from_mapping(name: str, values: Mapping[str, Any]) -> Axis:
    """An axis from a table file's ``{label: [train.py arguments]}`` (a string is one argument list item)."""
    if not values:
        raise ValueError(f"grid axis {name!r} has no values")
    out: dict[str, list[str]] = {}
    for label, args in values.items():
        items = [args] if isinstance(args, str) else list(args or [])
        if not all(isinstance(a, str | int | float) for a in items):
            raise ValueError(f"grid axis {name!r}, value {label!r}: arguments are strings, got {args!r}")
        out[str(label)] = [str(a) for a in items]
    return Axis(str(name), out)


def grid_cells(axes: Sequence[Axis], only: Mapping[str, Sequence[str]] | None = None) -> list[Cell]:
    """The cells of ``axes`` (their product, first axis outermost), restricted to ``only`` ``{axis: [labels]}``.

    Raises:
        ValueError: two axes of one name, or ``only`` naming an unknown axis or label.
    """
    names = [a.name for a in axes]
    if len(set(names)) != len(names):
        raise ValueError(f"grid axes must have distinct names, got {names}")
    only = dict(only or {})
    for axis_name, labels in only.items():
        axis = next((a for a in axes if a.name == axis_name), None)
        if axis is None:
            raise ValueError(f"--only names the axis {axis_name!r}; the grid's axes are {names}")
        unknown = [lab for lab in labels if lab not in axis.values]
        if unknown:
            raise ValueError(f"--only {axis_name}: {unknown} are not among {list(axis.values)}")
    cells = []
    for combo in itertools.product(*[list(a.values) for a in axes]):
        labels = dict(zip(names, combo, strict=True))
        if all(labels[k] in v for k, v in only.items()):
            args = [arg for axis, label in zip(axes, combo, strict=True) for arg in axis.values[label]]
            cells.append(Cell(labels, args))
    return cells


def parse_only(specs: Sequence[str]) -> dict[str, list[str]]:
    """``--only AXIS=L1,L2`` arguments as ``{axis: [labels]}``."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        axis, sep, labels = spec.partition("=")
        if not sep or not axis.strip():
            raise ValueError(f"--only takes AXIS=LABEL[,LABEL...], got {spec!r}")
        out.setdefault(axis.strip(), []).extend(v.strip() for v in labels.split(","))
    return out


def cell_dir(cell: Cell) -> str:
    """The directory of a cell's runs below ``OUT``: its labels, file-name safe (``""``: ``OUT`` itself)."""
    parts = [f"{_safe(k)}-{_safe(v)}" for k, v in cell.labels.items()]
    return "__".join(parts)


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("_") or "_"
