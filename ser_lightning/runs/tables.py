"""A paper's table as a file: the runs a ``ser-experiment`` grid makes and how their metrics fill the table.

A table file (``configs/tables/*.yaml``) describes one experiment::

    title: Scaling Ambiguity (paper 000), Table 2
    configs: [configs/qwen2_audio_lora.yaml]     # train.py configs of every run
    stage: fit                                   # fit (then test the best checkpoint) or test (zero-shot models)
    folds: session                               # the default protocol (--folds / --seeds / --run-folds override)
    seeds: 1
    run_folds: null                              # a slice of the folds, e.g. [0]: one random 80/20 split
    grid:                                        # axes: label -> train.py arguments; the runs are their product
      aug: {"w/ Aug.": [], "w/o Aug.": [--data.augment, "null"]}
      annot: {H: [--data.label_source, primary], S: [--data.label_source, synthetic]}
    tables:
      - title: IEMOCAP
        rows: aug                                # an axis, or entries {label, cell: {axis: label}, prefix}
        columns: annot                           # optional, the same forms
        metrics:                                 # the paper's columns, with their units
          - {key: js, header: "JS [bits] ↓", better: lower}
          - {key: bc, header: "BC ↑", better: higher}
        metrics_outer: true                      # columns ordered metric, then column entry (JS H, JS S, BC H ...)
        relative_to: null                        # a row label: adds "Δ% <header>" columns, positive = better
                                                 # (a metric with relative: false gets none)

A table entry's metric is ``test/<row prefix>/<column prefix>/<key>`` (empty prefixes left out) of the cell its row
and column select, read from the cell's ``summary.json`` (mean ± sample std over folds x seeds).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ser_lightning.runs.grid import Axis, Cell, axis_from_mapping
from ser_lightning.runs.json_values import write_text_atomic

TABLE_STEM = "table"  # OUT/table.md, table.csv, table.json


@dataclass(frozen=True)
class Entry:
    """A row or column of a table: its label, the cell labels it selects and its metric-key prefix."""

    label: str
    cell: dict[str, str] = field(default_factory=dict)
    prefix: str = ""


@dataclass(frozen=True)
class Metric:
    """A metric column: the key under ``test/``, its header (with units), direction, scale and digits."""

    key: str
    header: str
    better: str = "lower"
    scale: float = 1.0
    digits: int = 3
    relative: bool = True  # gets a relative-change column when the table has ``relative_to``


@dataclass(frozen=True)
class Table:
    """One table of a table file (see the module docstring)."""

    title: str
    rows: list[Entry]
    columns: list[Entry]
    metrics: list[Metric]
    metrics_outer: bool = True
    relative_to: str | None = None


@dataclass(frozen=True)
class TableFile:
    """A parsed table file: the experiment (configs, stage, protocol, grid) and its tables."""

    path: Path
    title: str
    configs: list[str]
    stage: str
    folds: str | None
    seeds: int | None
    run_folds: list[int] | None
    axes: list[Axis]
    tables: list[Table]


def read_table_file(path: str | Path) -> TableFile:
    """Parse and check a table file; errors name the file and the entry."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read the table file ({err})") from err
    where = str(path)
    stage = str(raw.get("stage", "fit"))
    if stage not in ("fit", "test"):
        raise ValueError(f"{where}: stage must be fit or test, got {stage!r}")
    axes = [axis_from_mapping(name, values or {}) for name, values in (raw.get("grid") or {}).items()]
    tables = [_table(t, axes, f"{where}: tables[{i}]") for i, t in enumerate(raw.get("tables") or [])]
    if not tables:
        raise ValueError(f"{where}: no tables")
    return TableFile(
        path=path,
        title=str(raw.get("title", path.stem)),
        configs=[str(c) for c in raw.get("configs") or []],
        stage=stage,
        folds=None if raw.get("folds") is None else str(raw["folds"]),
        seeds=None if raw.get("seeds") is None else int(raw["seeds"]),
        run_folds=None if raw.get("run_folds") is None else [int(f) for f in raw["run_folds"]],
        axes=axes,
        tables=tables,
    )


def _entries(spec: Any, axes: Sequence[Axis], where: str) -> list[Entry]:
    """Table rows / columns: an axis name (one entry per label), or a list of ``{label, cell, prefix}``."""
    if spec is None:
        return [Entry("")]
    if isinstance(spec, str):
        axis = next((a for a in axes if a.name == spec), None)
        if axis is None:
            raise ValueError(f"{where}: {spec!r} is not a grid axis ({[a.name for a in axes]})")
        return [Entry(label, {axis.name: label}) for label in axis.values]
    entries = []
    for item in spec:
        cell = {str(k): str(v) for k, v in (item.get("cell") or {}).items()}
        for name, label in cell.items():
            axis = next((a for a in axes if a.name == name), None)
            if axis is None or label not in axis.values:
                raise ValueError(f"{where}: entry {item!r} selects {name}={label!r}, not a grid value")
        entries.append(Entry(str(item["label"]), cell, str(item.get("prefix") or "")))
    return entries


def _table(raw: Mapping[str, Any], axes: Sequence[Axis], where: str) -> Table:
    metrics = [
        Metric(str(m["key"]), str(m.get("header", m["key"])), str(m.get("better", "lower")),
               float(m.get("scale", 1.0)), int(m.get("digits", 3)), bool(m.get("relative", True)))  # fmt: skip
        for m in raw.get("metrics") or []
    ]
    if not metrics or any(m.better not in ("lower", "higher") for m in metrics):
        raise ValueError(f"{where}: metrics must be given, each better: lower | higher")
    table = Table(
        title=str(raw.get("title", "")),
        rows=_entries(raw.get("rows"), axes, f"{where}.rows"),
        columns=_entries(raw.get("columns"), axes, f"{where}.columns"),
        metrics=metrics,
        metrics_outer=bool(raw.get("metrics_outer", True)),
        relative_to=None if raw.get("relative_to") is None else str(raw["relative_to"]),
    )
    if table.relative_to is not None and table.relative_to not in [r.label for r in table.rows]:
        raise ValueError(f"{where}: relative_to {table.relative_to!r} is not a row label")
    for row in table.rows:
        for col in table.columns:
            selected = {**row.cell, **col.cell}
            ambiguous = [a.name for a in axes if a.name not in selected and len(a.values) > 1]
            if ambiguous:
                raise ValueError(f"{where}: row {row.label!r} / column {col.label!r} leaves axes {ambiguous} open")
    return table


def _cell_of(cells: Sequence[Cell], selected: Mapping[str, str]) -> Cell | None:
    return next((c for c in cells if all(c.labels.get(k) == v for k, v in selected.items())), None)


def fill(table: Table, cells: Sequence[Cell], summaries: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The table's values: one record per (row, column, metric) with ``mean``, ``std``, ``n`` (``None``: no runs)."""
    out = []
    for row in table.rows:
        for col in table.columns:
            cell = _cell_of(cells, {**row.cell, **col.cell})
            stats = (summaries.get(cell.name) or {}).get("metrics", {}) if cell is not None else {}
            for metric in table.metrics:
                key = "test/" + "/".join(p for p in (row.prefix, col.prefix, metric.key) if p)
                found = stats.get(key) or {}
                mean, std = found.get("mean"), found.get("std")
                out.append({
                    "row": row.label, "column": col.label, "metric": metric.header, "key": key,
                    "cell": None if cell is None else cell.name,
                    "mean": None if mean is None else mean * metric.scale,
                    "std": None if std is None else std * metric.scale, "n": found.get("n", 0),
                })  # fmt: skip
    return out


def _fmt(value: float | None, std: float | None, digits: int) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if std is None else f"{value:.{digits}f} ± {std:.{digits}f}"


def _relative(value: float | None, base: float | None, better: str) -> str:
    """Relative change against the baseline in percent, positive = better (paper 003's Table 2)."""
    if value is None or base is None or base == 0:
        return "n/a"
    change = 100.0 * (value - base) / abs(base)
    return f"{(change if better == 'higher' else -change) + 0.0:+.1f}%"  # + 0.0: no "-0.0%"


def markdown(table: Table, records: Sequence[Mapping[str, Any]]) -> str:
    """The table in Markdown: the paper's columns (metric x column entry), one line per row entry."""
    by = {(r["row"], r["column"], r["metric"]): r for r in records}
    order = [(m, c) for m in table.metrics for c in table.columns] if table.metrics_outer else [
        (m, c) for c in table.columns for m in table.metrics]  # fmt: skip
    headers = [f"{m.header} {c.label}".strip() for m, c in order]
    relative = [(m, c) for m, c in order if m.relative] if table.relative_to is not None else []
    headers += [f"Δ% {m.header} {c.label}".strip() for m, c in relative]
    lines = [f"### {table.title}", "", "| | " + " | ".join(headers) + " |", "|---" * (len(headers) + 1) + "|"]
    for row in table.rows:
        cells = [_fmt(by[row.label, c.label, m.header]["mean"], by[row.label, c.label, m.header]["std"], m.digits)
                 for m, c in order]  # fmt: skip
        base = table.relative_to
        cells += [
            _relative(by[row.label, c.label, m.header]["mean"], by[base, c.label, m.header]["mean"], m.better)
            for m, c in relative
        ]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(out: str | Path, spec: TableFile, cells: Sequence[Cell], summaries: Mapping[str, Any]) -> Path:
    """Write ``table.md``, ``table.csv`` (one line per value) and ``table.json`` into ``out``; returns the .md."""
    out = Path(out)
    filled = [(t, fill(t, cells, summaries)) for t in spec.tables]
    text = f"# {spec.title}\n\nMean ± sample standard deviation over folds x seeds (runs under {out}).\n\n"
    text += "\n".join(markdown(t, records) for t, records in filled)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["table", "row", "column", "metric", "key", "cell", "mean", "std", "n"])
    for t, records in filled:
        for r in records:
            writer.writerow([t.title, *(r[k] for k in ("row", "column", "metric", "key", "cell", "mean", "std", "n"))])
    write_text_atomic(out / f"{TABLE_STEM}.csv", buffer.getvalue())
    doc = {"title": spec.title, "tables": [{"title": t.title, "values": records} for t, records in filled]}
    write_text_atomic(out / f"{TABLE_STEM}.json", json.dumps(doc, indent=2) + "\n")
    write_text_atomic(out / f"{TABLE_STEM}.md", text)
    return out / f"{TABLE_STEM}.md"
