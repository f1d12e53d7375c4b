r"""``ser-annotate``: synthetic ALM annotations of shards (run), new label sources (merge), saturation (analyse).

Examples::

    GEMINI_API_KEY=... ser-annotate run shards/iemocap4 --backend gemini --model gemini-2.5-pro --n 20 \\
        --out ann.sqlite --split train --concurrency 8
    ser-annotate run shards/iemocap4 --backend qwen2-audio --model Qwen/Qwen2-Audio-7B-Instruct --n 1 \\
        --mode exact --out ann.sqlite
    ser-annotate merge ann.sqlite shards/iemocap4 --out shards/iemocap4-syn --n 20
    ser-annotate analyse ann.sqlite shards/iemocap4 --out reports/saturation

``--mode exact`` (local Qwen2-Audio) stores each answer as a class distribution: the probability of every
written form of each class name, all its tokens scored; ``merge`` makes it the label source
``synthetic_exact`` (a distribution, not votes: no ``combined``) and ``analyse`` leaves it out of Fleiss' kappa.

``run`` exits 0 when every requested annotation is stored, 1 when some requests finally failed or some
audio did not decode (run it again: only what is missing is asked), 2 on a usage error and 130 when
interrupted (Ctrl-C or SIGTERM; the answers that arrived are stored).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ser_lightning.alm.annotator import make_backend
from ser_lightning.annotate.run import AnnotationInterrupted, RunSummary, run_annotation

logger = logging.getLogger("ser_lightning.annotate")

EXIT_INCOMPLETE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    """The ``ser-annotate`` parser with its ``run``, ``merge`` and ``analyse`` subcommands."""
    parser = argparse.ArgumentParser(
        prog="ser-annotate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="ask an ALM for the annotations the store lacks")
    run.add_argument("shards", type=Path, help="shard directory written by ser-prepare")
    run.add_argument("--backend", required=True, choices=("gemini", "qwen2-audio"))
    run.add_argument("--model", required=True, help="model name (Gemini) or checkpoint name/path (Qwen2-Audio)")
    run.add_argument("--n", type=_positive, required=True, help="annotations per utterance (more later: first N kept)")
    run.add_argument("--out", type=Path, required=True, help="the SQLite store (created, or resumed)")
    run.add_argument("--split", help="only this split of the card (default: every split)")
    run.add_argument("--mode", choices=("sample", "exact"), default="sample",
                     help="sample answers (as an API does), or exact class distributions (whole class names "
                          "scored over case, space and markdown forms; local qwen2-audio only)")  # fmt: skip
    run.add_argument("--concurrency", type=_positive, default=None,
                     help="batches in flight at once (default: 8 for gemini, 1 for qwen2-audio)")  # fmt: skip
    run.add_argument("--seed", type=int, default=0, help="seed of the persona and temperature plan")
    run.add_argument("--requests-per-second", type=float, help="gemini: rate limit over all threads, retries included")
    run.add_argument("--timeout", type=float, help="gemini: seconds per HTTP attempt (default 180)")
    run.add_argument("--attempts", type=_positive, help="gemini: HTTP attempts per request, first included (default 6)")
    run.add_argument("--backend-option", action="append", default=[], metavar="KEY=VALUE", type=_option,
                     help="another keyword of the backend constructor (VALUE: JSON, else a string)")  # fmt: skip
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    merge = sub.add_parser(
        "merge", help="write shards with the synthetic and combined label sources (exact mode: synthetic_exact)"
    )
    merge.add_argument("store", type=Path, help="the annotation store (SQLite) written by ser-annotate run")
    merge.add_argument("shards", type=Path, help="the shard directory it annotated")
    merge.add_argument("--out", type=Path, required=True, help="the new shard directory")
    merge.add_argument("--n", type=_positive, default=None, help="use the first N annotations of each utterance")
    merge.add_argument("--human", default="primary", help="label source of the human votes (default: primary)")
    _annotator_filters(merge)

    analyse = sub.add_parser(
        "analyse", help="saturation curve, Table 3 per source (kappa on integer votes only), JS per entropy tertile"
    )
    analyse.add_argument("store", type=Path, help="the annotation store (SQLite) written by ser-annotate run")
    analyse.add_argument("shards", type=Path, help="the shard directory it annotated")
    analyse.add_argument("--out", type=Path, required=True, help="directory for the JSON and PNG")
    analyse.add_argument("--n", type=_positive, default=None, help="sweep n = 1..N (default: all answers)")
    analyse.add_argument("--seed", type=int, default=0, help="seed of the random subsets of n answers")
    analyse.add_argument("--human", default="primary", help="label source of the human votes (default: primary)")
    _annotator_filters(analyse)
    return parser


def _annotator_filters(parser: argparse.ArgumentParser) -> None:
    """``--backend/--model/--mode``: which annotator of the store, needed only when it holds several."""
    group = parser.add_argument_group("annotator (only when the store holds several)")
    group.add_argument("--backend", choices=("gemini", "qwen2-audio"))
    group.add_argument("--model")
    group.add_argument("--mode", choices=("sample", "exact"))


def _format_summary(summary: RunSummary) -> str:
    d = summary.as_dict()
    tokens = "" if d["tokens"] is None else f", {d['tokens']} tokens"
    return (
        f"{d['stored']} answers stored ({d['invalid']} invalid), {d['failed']} requests failed, "
        f"{d['unreadable']} not asked (audio does not decode); {d['requests']} requests, {d['retries']} retries"
        f"{tokens}, {d['seconds']:.1f} s; {d['already_stored'] + d['stored']}/{d['annotations']} stored, "
        f"{d['remaining']} remaining"
    )


def _report(summary: RunSummary) -> None:
    logger.info("%s", _format_summary(summary))
    for error, count in sorted(summary.errors.items(), key=lambda e: -e[1]):
        logger.warning("%d failed requests: %s", count, error)
    print(json.dumps(summary.as_dict()), flush=True)


def _sigterm_as_interrupt() -> Any:
    """Let SIGTERM (a scheduler stopping the job) stop a run as Ctrl-C does; returns the handler it replaced."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def run_command(args: argparse.Namespace) -> int:
    """``ser-annotate run``: returns the exit status (see the module docstring)."""
    concurrency = args.concurrency or (8 if args.backend == "gemini" else 1)
    options = dict(args.backend_option)
    for key in ("requests_per_second", "timeout", "attempts"):
        if getattr(args, key) is not None:
            if args.backend != "gemini":
                raise ValueError(f"--{key.replace('_', '-')} is an option of the gemini backend")
            options[key] = getattr(args, key)
    if args.backend == "qwen2-audio":
        options.setdefault("seed", args.seed)  # the local sampler's seed too, unless given
    try:
        backend = make_backend(args.backend, args.model, args.mode, **options)
    except (TypeError, RuntimeError, ImportError, OSError) as err:  # a bad option, no API key, no checkpoint
        raise ValueError(f"cannot start the {args.backend} backend: {err}") from err
    previous = _sigterm_as_interrupt()
    try:
        summary = run_annotation(
            args.shards,
            backend,
            args.out,
            args.n,
            split=args.split,
            concurrency=concurrency,
            seed=args.seed,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt as stop:
        if not isinstance(stop, AnnotationInterrupted):  # before any request was sent
            return EXIT_INTERRUPTED
        logger.warning("interrupted: the answers that arrived are stored; run the same command again to resume")
        _report(stop.summary)
        if any(t.name.startswith("annotate") and t.is_alive() for t in threading.enumerate()):
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)  # requests still in flight: don't wait for them (they are asked again)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if callable(getattr(backend, "close", None)):
            backend.close()
    _report(summary)
    if summary.remaining:
        logger.warning("%d annotations are missing; run the same command again to ask for them", summary.remaining)
        return EXIT_INCOMPLETE
    return 0


def _filters(args: argparse.Namespace) -> dict[str, str | None]:
    return {"backend": args.backend, "model": args.model, "mode": args.mode}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ser-annotate run|merge|analyse``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ser_lightning").setLevel(logging.INFO)  # not the HTTP client's line per request
    try:
        if args.command == "run":
            return run_command(args)
        if args.command == "merge":
            from ser_lightning.annotate.merge import merge_store

            result = merge_store(args.store, args.shards, args.out, n=args.n, human=args.human, **_filters(args))
        else:
            from ser_lightning.annotate.analyse import analyse_store

            result = analyse_store(args.store, args.shards, args.out, n=args.n, seed=args.seed, human=args.human,
                                   **_filters(args))  # fmt: skip
    except (FileNotFoundError, KeyError, ValueError) as err:
        logger.error("%s", err.args[0] if isinstance(err, KeyError) and err.args else err)
        return EXIT_USAGE
    print(json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
