"""``ser-experiment``: run a config over folds x seeds and aggregate the test metrics (mean ± std across runs).

AmbER² (Sec. 4) reports five-fold cross-validation with five seeds, as mean and standard deviation: on IEMOCAP
each session is a fold (``--folds session``), on MSP-Podcast five equal-sized random folds (``--folds 5``)::

    ser-experiment --config configs/amber2.yaml --folds session --seeds 5 --out runs/amber2_iemocap

Each run is an ordinary ``train.py fit`` with ``test_after_fit`` in ``OUT/fold{f}_seed{s}/``, its DataModule
given the fold's ``split_assignment`` (``OUT/folds/fold{f}.json``); a run whose ``test_metrics.json`` exists is
skipped, so an interrupted protocol resumes. The runs are subprocesses (``python -m ser_lightning.cli.experiment
_train ...``): a fresh interpreter per run leaves no global state behind (seeds, logging, CUDA, process groups),
and Lightning's DDP launcher re-executes that command line for the other ranks. ``--in-process`` calls
:func:`ser_lightning.cli.train.main` directly (faster start; single-device runs, e.g. tests).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ser_lightning.data.folds import VAL_GROUPS, assignment_counts, fold_assignments, parse_folds, rows_of
from ser_lightning.data.shards import storage
from ser_lightning.data.shards.card import iter_shard_meta
from ser_lightning.data.shards.storage import Location
from ser_lightning.runs.json_values import write_text_atomic
from ser_lightning.runs.names import FOLDS_DIR, PROTOCOL, TEST_METRICS, experiment_run, fold_assignment
from ser_lightning.runs.summary import aggregate, write_summary

log = logging.getLogger(__name__)

TRAIN_ENTRY = "_train"  # argv[0] that makes this module run one train.py command (the subprocess of a run)
RESERVED = ("--seed_everything", "--data.seed", "--data.split_assignment", "--trainer.logger")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ser-experiment",
        description="Run a config over folds x seeds (AmbER² Sec. 4 protocol) and aggregate the test metrics. "
        "Unknown arguments are train.py overrides (e.g. --trainer.max_epochs 3).",
        allow_abbrev=False,
    )
    p.add_argument("--config", action="append", default=[], help="train.py config (repeatable, in order)")
    p.add_argument("--folds", help="session | speaker | official | K (>= 2 equal-sized random folds)")
    p.add_argument("--seeds", type=int, default=1, help="runs per fold with seeds 0..N-1 (default 1)")
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
    if not args.config or args.folds is None:
        raise SystemExit("ser-experiment: --config and --folds are required (unless --aggregate-only)")
    if args.seeds < 1:
        raise SystemExit("ser-experiment: --seeds must be >= 1")
    clash = [o for o in overrides if o.split("=")[0].startswith(RESERVED)]
    if clash:
        raise SystemExit(f"ser-experiment: {clash} are set per run by ser-experiment; leave them out")
    index, count = _parse_shard(args.shard)
    folds = _write_folds(args, overrides)
    runs = [(f, s) for f in range(folds) for s in range(args.seeds)][index::count]
    failed = [(f, s) for f, s in runs if not _run(out, f, s, args.config, overrides, args.in_process)]
    _aggregate(out)
    if failed:
        log.error("%d runs failed: %s", len(failed), ", ".join(experiment_run(f, s) for f, s in failed))
    return 1 if failed else 0


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


def _write_folds(args: argparse.Namespace, overrides: list[str]) -> int:
    """Write ``OUT/folds/fold{f}.json`` and ``OUT/protocol.json``; refuse an ``OUT`` of another protocol."""
    shards, label_source = data_settings(args.config, overrides)
    rows = rows_of(iter_shard_meta(shards, sources=[label_source]))
    try:
        assignments = fold_assignments(
            rows, parse_folds(args.folds), args.fold_seed, args.val_fraction, args.val_group, args.official_test_split
        )
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
        "fold_counts": [assignment_counts(a) for a in assignments],
    }
    path = args.out / PROTOCOL
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        keys = [k for k in protocol if k != "seeds" and old.get(k) != protocol[k]]
        if keys:
            raise SystemExit(f"ser-experiment: {args.out} holds another protocol (differs in {keys}); use a new --out")
    (args.out / FOLDS_DIR).mkdir(parents=True, exist_ok=True)
    for f, assignment in enumerate(assignments):
        write_text_atomic(args.out / FOLDS_DIR / fold_assignment(f), json.dumps(assignment, sort_keys=True))
    protocol.update(configs=list(args.config), overrides=list(overrides))
    write_text_atomic(path, json.dumps(protocol, indent=2) + "\n")  # the tasks of a job array write it alike
    log.info("%d folds of %s: %s", len(assignments), shards, protocol["fold_counts"])
    return len(assignments)


def train_args(out: Path, fold: int, seed: int, configs: list[str], overrides: list[str]) -> list[str]:
    """The ``train.py`` command line of one run: fit + test into ``OUT/fold{f}_seed{s}/``."""
    args = ["fit"]
    for config in configs:
        args += ["--config", str(config)]
    return args + list(overrides) + [
        "--seed_everything", str(seed),
        "--data.seed", str(seed),
        "--data.split_assignment", str(out / FOLDS_DIR / fold_assignment(fold)),
        "--test_after_fit", "true",
        "--trainer.logger.init_args.save_dir", str(out),
        "--trainer.logger.init_args.name", "",
        "--trainer.logger.init_args.version", experiment_run(fold, seed),
    ]  # fmt: skip


def _run(out: Path, fold: int, seed: int, configs: list[str], overrides: list[str], in_process: bool) -> bool:
    """Run one fold x seed unless its ``test_metrics.json`` exists; whether it has one afterwards."""
    run_dir = out / experiment_run(fold, seed)
    if (run_dir / TEST_METRICS).is_file():
        log.info("fold %d seed %d: done before (%s), skipped", fold, seed, run_dir)
        return True
    if run_dir.exists():  # an interrupted run: start it over
        log.warning("fold %d seed %d: %s has no test_metrics.json; running it again from scratch", fold, seed, run_dir)
        shutil.rmtree(run_dir)
    args = train_args(out, fold, seed, configs, overrides)
    log.info("fold %d seed %d: train.py %s", fold, seed, " ".join(args))
    if in_process:
        from ser_lightning.cli.train import main as train_main

        try:
            train_main(args)
        except (Exception, SystemExit):
            log.exception("fold %d seed %d failed", fold, seed)
    else:
        code = subprocess.call([sys.executable, "-m", "ser_lightning.cli.experiment", TRAIN_ENTRY, *args])
        if code:
            log.error("fold %d seed %d: train.py exited with status %d", fold, seed, code)
    return (run_dir / TEST_METRICS).is_file()


def _aggregate(out: Path) -> int:
    protocol_path = out / PROTOCOL
    protocol = json.loads(protocol_path.read_text(encoding="utf-8")) if protocol_path.is_file() else None
    summary = aggregate(out, protocol)
    if not summary["runs"]:
        log.error("%s: no finished run (fold*_seed*/test_metrics.json)", out)
        return 1
    write_summary(out, summary)
    log.warning("%d runs aggregated into %s (summary.json, .md, .csv)%s", len(summary["runs"]), out,
                f"; missing: {summary['missing']}" if summary.get("missing") else "")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
