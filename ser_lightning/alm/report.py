"""Tables and plots of tested runs, the library of ``ser-report`` (:mod:`ser_lightning.cli.report`).

:func:`build_report` reads each run directory's ``test_metrics.json`` and ``test_predictions.jsonl`` (an ALM's run
and a trained model's alike) and writes paper 003's Table 2 as ``report.md`` / ``report.csv`` (:func:`table_rows`:
the relative change against a baseline, positive = better) and Fig. 3 as ``entropy_bins.png`` / ``.csv``
(:func:`entropy_bins`: medians per width bin of H / log C). Every row shows n scored, the utterances left out as
invalid and the valid fraction (paper 003 Appendix A.2 reports it and evaluates valid answers only); rows a run
marked ``"scored": false`` are in no table or bin. A usage error raises :class:`ReportError`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from ser_lightning.metrics import width_bins
from ser_lightning.metrics.functional.distribution import (
    bhattacharyya_coefficient_per_item,
    js_divergence_bits_per_item,
    r2_per_item,
)
from ser_lightning.runs.names import TEST_METRICS, TEST_PREDICTIONS
from ser_lightning.runs.scored_records import is_scored

# Table 2 columns: key in test_metrics.json (test/<key>), heading, whether higher is better
TABLE_METRICS = (
    ("js", "JS ↓", False),
    ("bc", "BC ↑", True),
    ("r2", "R² ↑", True),
    ("acc", "Acc. ↑", True),
    ("f1", "Macro-F1 ↑", True),
)
BIN_METRICS = {"js": js_divergence_bits_per_item, "bc": bhattacharyya_coefficient_per_item, "r2": r2_per_item}
NUM_BINS = 5  # Fig. 3: five equal-width groups of entropy


class ReportError(Exception):
    """A problem with the command line or a run directory (exit status 2)."""


@dataclass
class Run:
    """One tested run: label, directory, ``test_metrics.json`` and the scored ``test_predictions.jsonl`` records.

    ``unscored_lines``: the file's lines marked ``"scored": false`` (left out of the run's metrics and of the report).
    """

    label: str
    path: Path
    metrics: dict[str, Any]
    records: list[dict[str, Any]]
    unscored_lines: int = 0

    def metric(self, key: str) -> float | None:
        """``test/<key>`` as a float, ``None`` when absent or not finite."""
        value = self.metrics.get(f"test/{key}")
        return float(value) if isinstance(value, int | float) and math.isfinite(value) else None

    @property
    def scored(self) -> int:
        """Utterances scored: the pass's count, else ``test/count``, else the prediction lines."""
        for value in (self.metrics.get("scored"), self.metrics.get("test/count")):
            if isinstance(value, int | float) and math.isfinite(value):
                return int(value)
        return len(self.records)

    @property
    def invalid(self) -> int | None:
        """Utterances left out without a valid prediction (the pass's ``invalid``); ``None`` for older runs."""
        value = self.metrics.get("invalid")
        return int(value) if isinstance(value, int | float) and math.isfinite(value) else None

    @property
    def valid_fraction(self) -> float | None:
        """The ALM's logged ``test/valid_fraction``, else scored / (scored + invalid), ``None`` when neither is known.

        The logged one comes first: under a fallback every utterance is scored though not every answer was valid.
        """
        logged = self.metric("valid_fraction")
        if logged is not None:
            return logged
        total = None if self.invalid is None else self.scored + self.invalid
        return self.scored / total if total else None


def load_run(path: Path, label: str) -> Run:
    """Read a run directory; a missing or unreadable file raises :class:`ReportError` naming the directory."""
    files = {name: path / name for name in (TEST_METRICS, TEST_PREDICTIONS)}
    for name, file in files.items():
        if not file.is_file():
            raise ReportError(f"{path}: no {name} (run `train.py test` for this run first)")
    try:
        metrics = json.loads(files[TEST_METRICS].read_text(encoding="utf-8"))
        lines = files[TEST_PREDICTIONS].read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: unreadable run files ({err})") from err
    scored = [r for r in records if not isinstance(r, dict) or is_scored(r)]  # a malformed line is reported later
    return Run(label, path, metrics, scored, len(records) - len(scored))


def default_labels(paths: Sequence[Path]) -> list[str]:
    """Each path relative to the common parent of all (e.g. ``alm_tts/version_0``)."""
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath(resolved))
    if any(p == common for p in resolved):  # one run, or a run inside another: label from one level up
        common = common.parent
    return [p.relative_to(common).as_posix() for p in resolved]


def relative_change(value: float | None, baseline: float | None, higher_is_better: bool) -> float | None:
    """Change against the baseline in percent, positive = better (Table 2: JS 0.3592 -> 0.3450 is +4.0%)."""
    if value is None or baseline is None or baseline == 0:
        return None
    gain = value - baseline if higher_is_better else baseline - value
    return gain / abs(baseline) * 100.0


def table_rows(runs: Sequence[Run], baseline: int) -> list[dict[str, Any]]:
    """One row per run: metrics, n scored, invalid, valid fraction and relative changes (``None`` when missing)."""
    base = runs[baseline]
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": run.label, "run_dir": str(run.path), "n": run.scored, "invalid": run.invalid}
        for key, _, higher in TABLE_METRICS:
            row[key] = run.metric(key)
            row[f"{key}_rel_change"] = relative_change(row[key], base.metric(key), higher)
        row["valid_fraction"] = run.valid_fraction
        row["baseline"] = run is base
        rows.append(row)
    return rows


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: Sequence[dict[str, Any]], baseline_label: str) -> str:
    """Table 2 as markdown: cells like ``0.3450 (+4.0%)``; the baseline row has no change.

    Then n scored, invalid (left out of the metrics) and the valid fraction; ``n/a`` where a run did not record them.
    """
    head = ["Run", *(title for _, title, _ in TABLE_METRICS), "n", "Invalid", "Valid"]
    lines = [
        f"Test metrics per run; relative change against `{baseline_label}` in brackets (%, positive = better).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    for row in rows:
        cells = [row["run"]]
        for key, _, _ in TABLE_METRICS:
            change = row[f"{key}_rel_change"]
            cell = _fmt(row[key])
            cells.append(cell if row["baseline"] or change is None else f"{cell} ({change:+.1f}%)")
        cells.append(str(row["n"]))
        cells.append("n/a" if row["invalid"] is None else str(row["invalid"]))
        cells.append(_fmt(row["valid_fraction"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: Sequence[dict[str, Any]], baseline_label: str, out: Path) -> None:
    """``report.md`` and ``report.csv`` (separate ``*_rel_change`` columns in percent) into ``out``."""
    (out / "report.md").write_text(markdown_table(rows, baseline_label), encoding="utf-8")
    keys = [key for key, _, _ in TABLE_METRICS]
    fields = ["run", "run_dir", "baseline", "n", "invalid", *keys, "valid_fraction", *(f"{k}_rel_change" for k in keys)]
    with (out / "report.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row[k] is None else row[k] for k in fields})


def _floats(values: Sequence[Any] | None) -> list[float]:
    return [math.nan if v is None else float(v) for v in values or []]


def per_item_scores(
    records: Sequence[dict[str, Any]], num_bins: int = NUM_BINS
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Fig. 3 bin of each record (0-based, -1 without a target entropy) and the per-utterance JS / BC / R² ``(N,)``.

    The bins are ``num_bins`` equal-width bins of H(target) / log C, ``[lo, hi)`` and the last closed: the metrics'
    own :func:`~ser_lightning.metrics.width_bins` (so an entropy on an edge lands where ``test/wbin*`` puts it).
    """
    if not records:
        return np.zeros(0, dtype=np.int64), {name: np.zeros(0) for name in BIN_METRICS}
    preds = torch.tensor([_floats(r["probabilities"]) for r in records], dtype=torch.float64)
    target = torch.tensor([_floats(r["target"]) for r in records], dtype=torch.float64)
    if preds.shape != target.shape:
        raise ValueError(f"predictions {tuple(preds.shape)} and targets {tuple(target.shape)} differ in shape")
    entropy = torch.tensor(
        [math.nan if r.get("target_entropy") is None else r["target_entropy"] for r in records], dtype=torch.float64
    )
    edges = [k / num_bins for k in range(1, num_bins)]
    bins = torch.where(entropy.isnan(), -1, width_bins(entropy, target.shape[1], edges)).numpy()
    scores = {name: fn(preds, target).numpy() for name, fn in BIN_METRICS.items()}
    return bins, scores


def entropy_bins(run: Run, num_bins: int = NUM_BINS) -> list[dict[str, Any]]:
    """Fig. 3 rows of one run: per bin its range, count and the median JS / BC / R² (NaN when empty)."""
    try:
        bins, scores = per_item_scores(run.records, num_bins)
    except (ValueError, TypeError, KeyError) as err:  # ragged or missing fields: name the run
        raise ReportError(f"{run.path}: malformed {TEST_PREDICTIONS} ({err})") from err
    rows = []
    for b in range(num_bins):
        sel = bins == b
        row: dict[str, Any] = {"run": run.label, "bin": b + 1, "low": b / num_bins, "high": (b + 1) / num_bins}
        row["count"] = int(sel.sum())
        for name, values in scores.items():
            row[f"{name}_median"] = float(np.median(values[sel])) if sel.any() else math.nan
        rows.append(row)
    return rows


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _bin_label(row: dict[str, Any], last: bool) -> str:
    return f"[{row['low']:.1f}, {row['high']:.1f}{']' if last else ')'}"


def entropy_figure(bins: Sequence[Sequence[dict[str, Any]]]) -> Figure:
    """Three panels (JS, BC, R²): the median per bin, one line per run; empty bins leave gaps."""
    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, len(BIN_METRICS))
    titles = {"js": "JS ↓", "bc": "BC ↑", "r2": "R² ↑"}
    for ax, name in zip(axes, BIN_METRICS, strict=True):
        for rows in bins:
            ax.plot([r["bin"] for r in rows], [r[f"{name}_median"] for r in rows], marker="o", label=rows[0]["run"])
        first = bins[0]
        ax.set_xticks([r["bin"] for r in first], [_bin_label(r, i == len(first) - 1) for i, r in enumerate(first)])
        ax.tick_params(axis="x", labelsize="small")
        ax.set_xlabel("normalised target entropy H / log C")
        ax.set_title(f"median {titles[name]}")
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    return fig


def write_entropy_bins(runs: Sequence[Run], out: Path) -> list[list[dict[str, Any]]]:
    """``entropy_bins.csv`` (count and medians per run and bin) and ``entropy_bins.png`` into ``out``."""
    bins = [entropy_bins(run) for run in runs]
    fields = ["run", "bin", "low", "high", "count", *(f"{name}_median" for name in BIN_METRICS)]
    with (out / "entropy_bins.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for rows in bins:
            writer.writerows({k: "" if _is_nan(v) else v for k, v in r.items()} for r in rows)
    entropy_figure(bins).savefig(out / "entropy_bins.png", dpi=120)
    return bins


def resolve_baseline(choice: str | None, labels: Sequence[str]) -> int:
    """Index of the baseline run: a label, else a 0-based position among the run directories (default 0)."""
    if choice is None:
        return 0
    if choice in labels:
        return list(labels).index(choice)
    if choice.lstrip("-").isdigit() and 0 <= int(choice) < len(labels):
        return int(choice)
    raise ReportError(f"--baseline {choice!r} is neither a run label ({', '.join(labels)}) nor 0..{len(labels) - 1}")


def build_report(
    run_dirs: Sequence[Path], out: Path, baseline: str | None = None, labels: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Read the runs and write the four report files into ``out``; returns the table rows."""
    if labels is not None and len(labels) != len(run_dirs):
        raise ReportError(f"{len(labels)} labels for {len(run_dirs)} run directories")
    names = list(labels) if labels is not None else default_labels(run_dirs)
    runs = [load_run(Path(path), name) for path, name in zip(run_dirs, names, strict=True)]
    base = resolve_baseline(baseline, names)
    for run in runs:
        if len(run.records) != run.scored:
            message = f"{run.path}: {len(run.records)} scored lines in {TEST_PREDICTIONS}, {run.scored} scored"
            print(f"ser-report: warning: {message}", file=sys.stderr)
        if run.invalid is not None and run.unscored_lines != run.invalid:
            message = f"{run.path}: {run.unscored_lines} unscored lines in {TEST_PREDICTIONS}, {run.invalid} invalid"
            print(f"ser-report: warning: {message}", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(runs, base)
    write_table(rows, names[base], out)
    write_entropy_bins(runs, out)
    return rows


if __name__ == "__main__":  # the entry point moved: say so instead of doing nothing
    print("ser-report: the command is `ser-report` (python -m ser_lightning.cli.report)", file=sys.stderr)
    raise SystemExit(2)
