"""The summary of a ``ser-experiment`` protocol: every numeric test metric as mean ± std over its runs.

``summary.json``: ``{"runs": [{"fold", "seed", "dir", "metrics": {...}}], "metrics": {"test/js": {"mean", "std",
"n"}, ...}, "missing": [...]}``; ``std`` is the sample standard deviation (``ddof=1``, as papers report it
across runs; ``null`` for one run); ``n`` counts the runs with a finite value. ``summary.csv``: one row per run,
then ``mean`` and ``std`` rows. ``summary.md``: mean ± std per metric and the per-run overall metrics.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ser_lightning.runs.json_values import write_text_atomic
from ser_lightning.runs.names import SUMMARY_STEM, TEST_METRICS, experiment_run

RUN_DIR = re.compile(r"^fold(\d+)_seed(\d+)$")


def run_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric ``test/...`` entries of a ``test_metrics.json`` (lists such as CIs, nulls and flags left out)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if k.startswith("test/") and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def mean_std(values: list[float]) -> dict[str, float | int | None]:
    """``{"mean", "std", "n"}`` of values; ``std`` with ``ddof=1`` (``None`` below two values)."""
    n = len(values)
    if not n:
        return {"mean": None, "std": None, "n": 0}
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if n > 1 else None, "n": n}


def aggregate(out: str | Path, protocol: dict[str, Any] | None = None) -> dict[str, Any]:
    """The summary of the finished runs under ``out`` (``fold{f}_seed{s}/test_metrics.json``).

    ``protocol`` (``protocol.json``: ``fold_counts``, ``seeds``) names the runs expected; those without
    metrics are listed under ``missing``.
    """
    out = Path(out)
    runs = []
    for path in sorted(out.glob(f"fold*_seed*/{TEST_METRICS}")):
        m = RUN_DIR.match(path.parent.name)
        if m is None:
            continue
        raw = json.loads(path.read_text(encoding="utf-8"))
        run = {"fold": int(m.group(1)), "seed": int(m.group(2)), "dir": str(path.parent)}
        run["complete"] = raw.get("complete")
        run["metrics"] = run_metrics(raw)
        runs.append(run)
    runs.sort(key=lambda r: (r["fold"], r["seed"]))
    keys = sorted({k for r in runs for k in r["metrics"]}, key=_metric_order)
    summary: dict[str, Any] = {
        "runs": runs,
        "metrics": {k: mean_std([r["metrics"][k] for r in runs if k in r["metrics"]]) for k in keys},
        "std": "sample standard deviation across runs (ddof=1)",
    }
    if protocol is not None:
        done = {(r["fold"], r["seed"]) for r in runs}
        folds = protocol.get("run_folds") or range(len(protocol["fold_counts"]))  # a slice of the folds, or all
        expected = [(f, s) for f in folds for s in range(int(protocol["seeds"]))]
        summary["missing"] = [experiment_run(f, s) for f, s in expected if (f, s) not in done]
    return summary


def _metric_order(key: str) -> tuple[int, str]:
    """Overall metrics (``test/js``) first, then per bin / per head ones, each alphabetically."""
    return key.count("/"), key


def write_summary(out: str | Path, summary: dict[str, Any]) -> None:
    """Write ``summary.json``, ``summary.csv`` and ``summary.md`` into ``out`` (each atomically: array tasks race)."""
    out = Path(out)
    write_text_atomic(out / f"{SUMMARY_STEM}.json", json.dumps(summary, indent=2) + "\n")
    keys = list(summary["metrics"])
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["fold", "seed", "dir", *keys])
    for run in summary["runs"]:
        writer.writerow([run["fold"], run["seed"], run["dir"], *(_cell(run["metrics"].get(k)) for k in keys)])
    for stat in ("mean", "std"):
        writer.writerow([stat, "", "", *(_cell(summary["metrics"][k][stat]) for k in keys)])
    write_text_atomic(out / f"{SUMMARY_STEM}.csv", table.getvalue())
    write_text_atomic(out / f"{SUMMARY_STEM}.md", _markdown(summary))


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def _pm(stats: dict[str, Any]) -> str:
    mean, std = stats["mean"], stats["std"]
    if mean is None:
        return "n/a"
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _markdown(summary: dict[str, Any]) -> str:
    runs = summary["runs"]
    lines = [
        f"# Protocol summary: {len(runs)} runs",
        "",
        "Mean ± sample standard deviation (ddof=1) across runs; n: runs with the metric.",
        "",
        "| metric | mean ± std | n |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {_pm(s)} | {s['n']} |" for k, s in summary["metrics"].items()]
    overall = [k for k in summary["metrics"] if k.count("/") == 1]
    lines += ["", "## Runs (overall metrics; every metric in summary.csv)", ""]
    lines += ["| fold | seed | " + " | ".join(overall) + " |", "|---|---|" + "---|" * len(overall)]
    for run in runs:
        cells = [_cell(run["metrics"].get(k)) for k in overall]
        lines.append(f"| {run['fold']} | {run['seed']} | " + " | ".join(cells) + " |")
    if summary.get("missing"):
        lines += ["", f"Missing runs: {', '.join(summary['missing'])}"]
    return "\n".join(lines) + "\n"
