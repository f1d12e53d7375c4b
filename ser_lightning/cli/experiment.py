"""``ser-experiment``: run a config over folds x seeds (and a grid of settings), aggregate the test metrics.

AmbER² (Sec. 4) reports five-fold cross-validation with five seeds, as mean and standard deviation: on IEMOCAP
each session is a fold (``--folds session``), on MSP-Podcast five equal-sized random folds (``--folds 5``)::

    ser-experiment --config configs/amber2.yaml --folds session --seeds 5 --out runs/amber2_iemocap

Each run is an ordinary ``train.py fit`` with ``test_after_fit`` in ``OUT/fold{f}_seed{s}/``, its DataModule
given the fold's ``split_assignment`` (``OUT/folds/fold{f}.json``); ``--folds none`` keeps the card's own splits
(every test split of ``data.test_split``, e.g. MSP-Podcast's Test1 and Test2). A run whose ``test_metrics.json``
exists is skipped, so an interrupted protocol resumes. The runs are subprocesses (``python -m
ser_lightning.cli.experiment _train ...``): a fresh interpreter per run leaves no global state behind, and
Lightning's DDP launcher re-executes that command line for the other ranks. ``--in-process`` calls
:func:`ser_lightning.cli.train.main` directly (faster start; single-device runs, e.g. tests).

A grid (``--grid data.label_source=primary,synthetic``, repeatable, or a table file's ``grid``) multiplies the
runs: each cell (one value per axis) gets ``OUT/<cell>/fold{f}_seed{s}/`` and its own ``summary.*``; ``grid.json``
lists the cells. ``--table configs/tables/<paper>.yaml`` (:mod:`ser_lightning.runs.tables`) brings the configs,
protocol and grid of a paper's table and writes it as ``OUT/table.md`` (``.csv``, ``.json``) with the paper's
columns and units; ``--only AXIS=LABEL,...`` runs a slice of the grid.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ser_lightning.data.folds import VAL_GROUPS, assignment_counts, fold_assignments, parse_folds, rows_of
from ser_lightning.data.shards import storage
from ser_lightning.data.shards.card import iter_shard_meta
from ser_lightning.data.shards.storage import Location
from ser_lightning.runs.grid import Axis, Cell, cell_dir, grid_cells, parse_grid, parse_only
from ser_lightning.runs.json_values import write_text_atomic
from ser_lightning.runs.names import FOLDS_DIR, GRID, PROTOCOL, TEST_METRICS, experiment_run, fold_assignment
from ser_lightning.runs.summary import aggregate, write_summary
from ser_lightning.runs.tables import read_table_file, write_tables

log = logging.getLogger(__name__)

TRAIN_ENTRY = "_train"  # argv[0] that makes this module run one train.py command (the subprocess of a run)
RESERVED = ("--seed_everything", "--data.seed", "--data.split_assignment", "--trainer.logger")
NO_FOLDS = "none"  # --folds none: the card's own splits, no split assignment


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ser-experiment",
        description="Run a config over folds x seeds (AmbER² Sec. 4 protocol) and a grid of settings, and aggregate "
        "the test metrics. Unknown arguments are train.py overrides (e.g. --trainer.max_epochs 3).",
        allow_abbrev=False,
    )
    p.add_argument("--config", action="append", default=[], help="train.py config (repeatable, in order; after a "
                   "table file's)")  # fmt: skip
    p.add_argument("--table", type=Path, help="a paper's table file (configs/tables/*.yaml): configs, protocol, "
                   "grid and the table written to OUT/table.md")  # fmt: skip
    p.add_argument("--grid", action="append", default=[], help="KEY=V1,V2,...: an axis of config-key values "
                   "(repeatable; the runs are the product)")  # fmt: skip
    p.add_argument("--only", action="append", default=[], help="AXIS=LABEL[,LABEL]: run only these grid values")
    p.add_argument("--stage", choices=("fit", "test"), help="fit then test (default), or test only (zero-shot)")
    p.add_argument("--folds", help="session | speaker | official | none (the card's splits) | K (>= 2 random folds)")
    p.add_argument("--seeds", type=int, help="runs per fold with seeds 0..N-1 (default 1)")
    p.add_argument("--run-folds", help="comma-separated fold numbers to run (default: all), e.g. 0 for one split")
    p.add_argument("--out", required=True, type=Path, help="protocol directory")
    p.add_argument("--fold-seed", type=int, default=0, help="seed of the random folds and validation carving")
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation share of the training folds")
    p.add_argument("--val-group", choices=VAL_GROUPS, help="validation grouping (default: speaker for "
                   "session/speaker folds, else utterance)")  # fmt: skip
    p.add_argument("--official-test-split", default="test", help="the corpus split --folds official tests on")
    p.add_argument("--shard", default="0/1", help="i/n: run only runs i, i+n, i+2n ... (node i of n, 0-based); "
                   "auto: this Slurm array task's share (SLURM_ARRAY_TASK_ID - MIN of _COUNT)")  # fmt: skip
    p.add_argument("--aggregate-only", action="store_true", help="only aggregate the finished runs")
    p.add_argument("--in-process", action="store_true", help="run train.py in this process (single device)")
    return p


@dataclass(frozen=True)
class Job:
    """One run: its cell, fold and seed, where it goes and the ``train.py`` command line it runs."""

    cell: Cell
    fold: int
    seed: int
    run_dir: Path
    args: list[str]


def main(argv: list[str] | None = None) -> int:
    """Run the protocol (or only aggregate it); 0 when every run of this invocation finished with test metrics."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [TRAIN_ENTRY]:
        from ser_lightning.cli.train import main as train_main

        train_main(argv[1:])
        return 0
    if not log.handlers:  # this module's progress lines (Lightning configures its own loggers)
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("ser-experiment %(levelname)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    args, overrides = _parser().parse_known_args(argv)
    out: Path = args.out
    if args.aggregate_only:
        return _aggregate(out)
    try:
        table = None if args.table is None else read_table_file(args.table)
        axes = [*(table.axes if table else []), *(parse_grid(g) for g in args.grid)]
        cells = grid_cells(axes, parse_only(args.only))
    except ValueError as err:
        raise SystemExit(f"ser-experiment: {err}") from None
    configs = [*(table.configs if table else []), *args.config]
    args.folds = args.folds or (table.folds if table else None)
    args.seeds = args.seeds or (table.seeds if table else None) or 1
    stage = args.stage or (table.stage if table else "fit")
    run_folds = table.run_folds if table else None
    if args.run_folds:
        try:
            run_folds = [int(f) for f in args.run_folds.split(",")]
        except ValueError:
            raise SystemExit(f"ser-experiment: --run-folds takes fold numbers, got {args.run_folds!r}") from None
    args.run_folds = run_folds
    if not configs or args.folds is None:
        raise SystemExit("ser-experiment: --config (or --table) and --folds are required (unless --aggregate-only)")
    if args.seeds < 1:
        raise SystemExit("ser-experiment: --seeds must be >= 1")
    clash = [o for o in overrides if o.split("=")[0].startswith(RESERVED)]
    if clash:
        raise SystemExit(f"ser-experiment: {clash} are set per run by ser-experiment; leave them out")
    dirs = [cell_dir(c) for c in cells]
    if len(set(dirs)) != len(dirs):
        raise SystemExit(f"ser-experiment: grid labels give clashing directory names {dirs}")
    index, count = _parse_shard(args.shard)
    folds = _write_folds(args, configs, overrides, axes, stage)
    jobs = [
        _job(out, cell, f, s, train_args(out, f, s, configs, overrides, cell.args, stage, folds.assigned,
                                         cell_dir(cell)))
        for cell in cells for f in (run_folds or range(folds.count)) for s in range(args.seeds)
    ][index::count]  # fmt: skip
    failed = [j for j in jobs if not _run(j, args.in_process)]
    _aggregate(out)
    if failed:
        log.error("%d runs failed: %s", len(failed), ", ".join(str(j.run_dir) for j in failed))
    return 1 if failed else 0


def _job(out: Path, cell: Cell, fold: int, seed: int, args: list[str]) -> Job:
    return Job(cell, fold, seed, out / cell_dir(cell) / experiment_run(fold, seed), args)


def _parse_shard(spec: str) -> tuple[int, int]:
    if spec == "auto":
        return slurm_array_shard()
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise SystemExit(f"ser-experiment: --shard takes i/n, got {spec!r}") from None
    if not 0 <= index < count:
        raise SystemExit(f"ser-experiment: --shard i/n needs 0 <= i < n, got {spec!r}")
    return index, count


def slurm_array_shard() -> tuple[int, int]:
    """``(i, n)`` of this Slurm array task: ``SLURM_ARRAY_TASK_ID - _MIN`` of ``SLURM_ARRAY_TASK_COUNT``.

    Outside a job array (no ``SLURM_ARRAY_TASK_ID``) the whole protocol is this node's: ``(0, 1)``.
    """
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if task is None:
        log.info("--shard auto outside a Slurm job array: running every run")
        return 0, 1
    try:
        count = int(os.environ["SLURM_ARRAY_TASK_COUNT"])
        index = int(task) - int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
    except (KeyError, ValueError) as err:
        raise SystemExit(f"ser-experiment: --shard auto: unreadable Slurm array variables ({err})") from None
    if not 0 <= index < count:
        raise SystemExit(f"ser-experiment: --shard auto: array task {task} is not in 0..{count - 1} after the minimum "
                         "(use --array=0-N or --array=1-N with a step of 1)")  # fmt: skip
    log.info("--shard auto: Slurm array task %d of %d", index, count)
    return index, count


def data_settings(configs: list[str], overrides: list[str]) -> tuple[Location, str]:
    """``(shards, label_source)`` of the DataModule the runs get: the configs and overrides parsed as train.py does."""
    from ser_lightning.cli.train import parse_config

    config = parse_config(["fit", *[arg for c in configs for arg in ("--config", str(c))], *overrides])
    if not config.data.shards:
        raise SystemExit("ser-experiment: no data.shards in the configs or overrides")
    return storage.as_location(config.data.shards), str(config.data.label_source)


@dataclass(frozen=True)
class Folds:
    """How many folds the protocol has and whether its runs get a split assignment (not with ``--folds none``)."""

    count: int
    assigned: bool


def _write_folds(
    args: argparse.Namespace, configs: list[str], overrides: list[str], axes: list[Axis], stage: str
) -> Folds:
    """Write ``OUT/folds/fold{f}.json`` (unless ``--folds none``) and ``OUT/protocol.json``; refuse another protocol.

    Every cell of a grid shares the folds, built from the configs' and overrides' shards and label source.
    """
    shards, label_source = data_settings(configs, overrides)
    assignments: list[dict[str, str]] = []
    if args.folds != NO_FOLDS:
        rows = rows_of(iter_shard_meta(shards, sources=[label_source]))
        try:
            assignments = fold_assignments(
                rows, parse_folds(args.folds), args.fold_seed, args.val_fraction, args.val_group,
                args.official_test_split,
            )  # fmt: skip
        except ValueError as err:
            raise SystemExit(f"ser-experiment: {err}") from None
    protocol = {
        "folds": args.folds,
        "fold_seed": args.fold_seed,
        "val_fraction": args.val_fraction,
        "val_group": args.val_group,
        "official_test_split": args.official_test_split,
        "shards": str(shards),
        "seeds": args.seeds,
        "fold_counts": [assignment_counts(a) for a in assignments] if assignments else [None],
    }
    path = args.out / PROTOCOL
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        keys = [k for k in protocol if k != "seeds" and old.get(k) != protocol[k]]
        if keys:
            raise SystemExit(f"ser-experiment: {args.out} holds another protocol (differs in {keys}); use a new --out")
    args.out.mkdir(parents=True, exist_ok=True)
    if assignments:
        (args.out / FOLDS_DIR).mkdir(parents=True, exist_ok=True)
    for f, assignment in enumerate(assignments):
        write_text_atomic(args.out / FOLDS_DIR / fold_assignment(f), json.dumps(assignment, sort_keys=True))
    if args.run_folds and not all(0 <= f < len(protocol["fold_counts"]) for f in args.run_folds):
        raise SystemExit(f"ser-experiment: --run-folds {args.run_folds} outside 0..{len(protocol['fold_counts']) - 1}")
    protocol.update(configs=list(configs), overrides=list(overrides), stage=stage, run_folds=args.run_folds,
                    grid=[{"name": a.name, "values": a.values} for a in axes],
                    table=None if args.table is None else str(args.table))  # fmt: skip
    write_text_atomic(path, json.dumps(protocol, indent=2) + "\n")  # the tasks of a job array write it alike
    log.info("%d folds of %s: %s", len(protocol["fold_counts"]), shards, protocol["fold_counts"])
    return Folds(len(protocol["fold_counts"]), bool(assignments))


def train_args(
    out: Path,
    fold: int,
    seed: int,
    configs: list[str],
    overrides: list[str],
    cell_args: list[str] | tuple[str, ...] = (),
    stage: str = "fit",
    assigned: bool = True,
    cell: str = "",
) -> list[str]:
    """The ``train.py`` command line of one run: fit + test (or test only) into ``OUT/<cell>/fold{f}_seed{s}/``.

    The grid cell's arguments come after the configs and before the overrides, so an override has the last word.
    """
    args = [stage]
    for config in configs:
        args += ["--config", str(config)]
    args += [*cell_args, *overrides, "--seed_everything", str(seed), "--data.seed", str(seed)]
    if assigned:
        args += ["--data.split_assignment", str(out / FOLDS_DIR / fold_assignment(fold))]
    if stage == "fit":
        args += ["--test_after_fit", "true"]
    return args + [
        "--trainer.logger.init_args.save_dir", str(out / cell if cell else out),
        "--trainer.logger.init_args.name", "",
        "--trainer.logger.init_args.version", experiment_run(fold, seed),
    ]  # fmt: skip


def _run(job: Job, in_process: bool) -> bool:
    """Run one job unless its ``test_metrics.json`` exists; whether it has one afterwards."""
    where = f"{job.cell.name + ' ' if job.cell.name else ''}fold {job.fold} seed {job.seed}"
    if (job.run_dir / TEST_METRICS).is_file():
        log.info("%s: done before (%s), skipped", where, job.run_dir)
        return True
    if job.run_dir.exists():  # an interrupted run: start it over
        log.warning("%s: %s has no test_metrics.json; running it again from scratch", where, job.run_dir)
        shutil.rmtree(job.run_dir)
    log.info("%s: train.py %s", where, " ".join(job.args))
    if in_process:
        from ser_lightning.cli.train import main as train_main

        try:
            train_main(job.args)
        except (Exception, SystemExit):
            log.exception("%s failed", where)
    else:
        code = subprocess.call([sys.executable, "-m", "ser_lightning.cli.experiment", TRAIN_ENTRY, *job.args])
        if code:
            log.error("%s: train.py exited with status %d", where, code)
    return (job.run_dir / TEST_METRICS).is_file()


def _aggregate(out: Path) -> int:
    """Write each cell's ``summary.*``, ``grid.json`` for a grid, and the table of a table file."""
    protocol_path = out / PROTOCOL
    protocol = json.loads(protocol_path.read_text(encoding="utf-8")) if protocol_path.is_file() else None
    axes = [Axis(a["name"], a["values"]) for a in (protocol or {}).get("grid") or []]
    cells = grid_cells(axes)
    summaries: dict[str, dict] = {}
    for cell in cells:
        summary = aggregate(out / cell_dir(cell), protocol)
        if summary["runs"]:
            write_summary(out / cell_dir(cell), summary)
            summaries[cell.name] = summary
    if not summaries:
        log.error("%s: no finished run (fold*_seed*/test_metrics.json)", out)
        return 1
    runs = sum(len(s["runs"]) for s in summaries.values())
    if axes:
        grid = [{"cell": c.name, "labels": c.labels, "dir": cell_dir(c), "runs": len(summaries.get(c.name, {}).get(
            "runs", [])), "missing": summaries.get(c.name, {}).get("missing")} for c in cells]  # fmt: skip
        write_text_atomic(out / GRID, json.dumps({"axes": protocol["grid"], "cells": grid}, indent=2) + "\n")
    table = (protocol or {}).get("table")
    where = "" if table is None else f"; table: {write_tables(out, read_table_file(table), cells, summaries)}"
    log.warning("%d runs aggregated into %s (summary.json, .md, .csv per cell)%s", runs, out, where)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
