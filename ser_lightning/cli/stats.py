"""``ser-stats``: agreement and ambiguity statistics of a vote table or a shard directory."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ser_lightning.corpora.crema_d import is_tabulated_votes, read_tabulated_votes
from ser_lightning.data.shards import storage
from ser_lightning.data.shards.card import shard_dir_statistics
from ser_lightning.labels import CLASS_SETS, get_class_set
from ser_lightning.stats import STATS_KEYS, vote_statistics


def read_vote_csv(path: Path, classes: Sequence[str]) -> np.ndarray:
    """Vote counts from a CSV whose columns named ``classes`` hold (possibly fractional) vote counts."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in classes if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}:1: no column for classes {missing}; header is {reader.fieldnames}")
        rows = []
        for row in reader:
            try:
                votes = [float(row[c]) for c in classes]
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}:{reader.line_num}: vote counts must be numbers ({err})") from err
            if any(v < 0 for v in votes) or not np.all(np.isfinite(votes)):
                raise ValueError(f"{path}:{reader.line_num}: vote counts must be finite and non-negative: {votes}")
            rows.append(votes)
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(classes))


def table_statistics(path: Path, classes: str | None = None, crema_d_modality: str = "voice") -> dict[str, Any]:
    """Statistics of a CREMA-D ``tabulatedVotes.csv`` (recognised by its header) or a vote-count CSV."""
    with path.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    if is_tabulated_votes(header) and classes is None:
        table = read_tabulated_votes(path, crema_d_modality)
        return vote_statistics(table.counts, CLASS_SETS["cremad6"].classes)
    if classes is None:
        raise ValueError(f"{path}: not a CREMA-D tabulatedVotes.csv; name the vote columns with --classes A,B,...")
    names = list(get_class_set(classes).classes)  # a class-set name or "A,B,...": at least 2 distinct classes
    counts = read_vote_csv(path, names)
    empty = int((counts.sum(axis=1) <= 0).sum())
    if empty:
        raise ValueError(f"{path}: {empty} rows have no votes; remove them or fix the table")
    return vote_statistics(counts, names)


def _format_table(stats: dict[str, Any]) -> str:
    lines = []
    for key in STATS_KEYS:
        value = stats.get(key)
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v:g}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(f"{v:.4f}" for v in value)
        elif isinstance(value, float):
            value = f"{value:.4f}"
        lines.append(f"{key:<24} {value}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ser-stats FILE|DIR [--classes A,B,...] [--json]``."""
    parser = argparse.ArgumentParser(prog="ser-stats", description=__doc__)
    parser.add_argument("path", help="vote table (CSV), or shard directory written by ser-prepare (a path or a URL)")
    parser.add_argument("--classes", help="vote-count columns, e.g. Anger,Happy,Sad, or a class-set name")
    parser.add_argument("--crema-d-modality", choices=("voice", "face", "av"), default="voice")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object")
    args = parser.parse_args(argv)
    shard_dir = storage.is_remote(args.path) or Path(args.path).is_dir()
    try:
        if shard_dir:
            stats: dict[str, Any] = shard_dir_statistics(args.path)
        else:
            stats = table_statistics(Path(args.path), args.classes, args.crema_d_modality)
    except (OSError, ValueError, KeyError) as err:
        print(f"ser-stats: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(stats))
    elif shard_dir:
        print("\n\n".join(f"[{split}]\n{_format_table(s)}" for split, s in stats.items()))
    else:
        print(_format_table(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
