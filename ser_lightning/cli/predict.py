"""``ser-predict``: a trained checkpoint on your own recordings (files, folders, CSV manifests), no shards needed.

    ser-predict --ckpt runs/demo/version_0/checkpoints/last.ckpt recordings/ --out predictions.jsonl

Writes one row per file in input order (JSON Lines, or CSV when ``--out`` ends in ``.csv``), the files that could
not be used with their reasons in ``<out>.rejected.jsonl``, and a summary. Exit status: 0 when at least one file
was predicted, 1 when none was, 2 on a usage error (bad arguments, missing paths, missing transcripts).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ser_lightning.runs.names import PREDICTIONS

USAGE_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    """The ``ser-predict`` argument parser."""
    p = argparse.ArgumentParser(
        prog="ser-predict",
        description="Predict emotion distributions for audio files with a checkpoint of `train.py fit`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "PATH: audio files (anything libsndfile reads: WAV, FLAC, OGG, MP3, ...), folders (searched\n"
            "recursively) or CSV manifests with a `path` column (relative to the CSV) and optional `id`,\n"
            "`transcript` and `speaker` columns. Models that read text need a transcript per file: the manifest's\n"
            "column or a `.txt` file next to the audio with the same stem (Qwen2-Audio's prompt uses both if given).\n"
            "Output rows: id, path, classes, probabilities, entropy (nats), top, and for AmbER2 experts;\n"
            "CSV columns: id, path, top, entropy, prob_<class>... Rejected files go to <out>.rejected.jsonl.\n"
            "Exit status: 0 when at least one file was predicted, 1 when none was, 2 on a usage error."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="audio files, folders or CSV manifests")
    p.add_argument("--ckpt", required=True, type=Path, help="checkpoint of `train.py fit`")
    p.add_argument("--out", type=Path, default=Path(PREDICTIONS), help="output file (.jsonl or .csv)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per batch, sorted by length (default 8)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: CUDA when available")
    p.add_argument("--backbone", help="Qwen2-Audio: base model (hub id or local directory) instead of the stored one")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ser-predict``; returns the exit status (0 predicted, 1 nothing predicted, 2 usage error)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network: pretrained parts come from local files only
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from ser_lightning.callbacks.console import silence_known_warnings
    from ser_lightning.inference.inputs import InputError, find_inputs
    from ser_lightning.inference.predictor import load_model
    from ser_lightning.nn.pretrained import PretrainedNotFound

    silence_known_warnings()

    try:
        if args.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
        if not args.ckpt.is_file():
            raise InputError(f"no such checkpoint: {args.ckpt}")
        items = find_inputs(args.paths)
        if not items:
            raise InputError(f"no audio files found in {' '.join(args.paths)}")
        try:
            predictor = load_model(args.ckpt, backbone=args.backbone, device=args.device)
        except (ValueError, KeyError, OSError, PretrainedNotFound) as err:  # not a checkpoint we can use
            raise InputError(f"cannot load {args.ckpt}: {err}") from err
        predictor.batch_size = args.batch_size
        missing = predictor.missing_transcripts(items)
        if missing:
            listed = "\n  ".join(missing)
            raise InputError(
                f"the model reads transcripts, but {len(missing)} of {len(items)} files have none (give a manifest "
                f"with a `transcript` column or a .txt file next to each audio file):\n  {listed}"
            )
    except InputError as err:
        print(f"ser-predict: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    rows, rejected = _predict(predictor, items, progress=not args.no_progress)
    out = args.out
    rejected_path = out.with_suffix(".rejected.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_rows(out, rows, predictor.classes)
    _write_jsonl(rejected_path, rejected)
    print(
        f"ser-predict: {len(rows)} of {len(items)} files predicted -> {out}; {len(rejected)} rejected"
        + (f" (reasons in {rejected_path})" if rejected else "")
    )
    return 0 if rows else 1


def _predict(predictor: Any, items: Sequence[Any], progress: bool) -> tuple[list[dict], list[dict]]:
    """Rows of the predicted items in input order, and ``{"path", "reason"}`` of the rejected ones."""
    from tqdm import tqdm

    results: list[dict | None] = [None] * len(items)
    with tqdm(total=len(items), unit="file", file=sys.stderr, disable=not progress, desc="ser-predict") as bar:
        for index, row in predictor.run(items, progress=bar.update):
            results[index] = row
    rows = [r for r in results if r is not None and "rejected" not in r]
    rejected = [{"path": r["path"], "reason": r["rejected"]} for r in results if r is not None and "rejected" in r]
    return rows, rejected


def write_rows(path: Path, rows: Sequence[dict[str, Any]], classes: Sequence[str]) -> None:
    """JSON Lines, or CSV (``id``, ``path``, ``top``, ``entropy``, ``prob_<class>``...) when ``path`` ends in .csv."""
    if path.suffix.lower() != ".csv":
        _write_jsonl(path, rows)
        return
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "path", "top", "entropy", *(f"prob_{c}" for c in classes)])
        for row in rows:
            writer.writerow([row["id"], row["path"], row["top"], row["entropy"], *row["probabilities"]])


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
