"""``ser-prepare``: read a corpus's original files and write WebDataset shards (``docs/shard-format.md``).

Examples::

    ser-prepare iemocap --root /data/IEMOCAP_full_release --out shards/iemocap4 --split session --test-session 5
    ser-prepare msp-podcast --root /data/MSP-Podcast --out shards/msp8 --classes msp8 --drop-out-of-set-votes
    ser-prepare crema-d --root /data/CREMA-D --out shards/crema-d
    ser-prepare manifest --manifest my.csv --classes Anger,Happy,Neutral,Sad --out shards/mine
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ser_lightning.corpora.record import OUT_OF_SET_HINT, ReadReport, UtteranceRecord
from ser_lightning.data.audio_io import DEFAULT_MAX_DURATION, SILENCE_THRESHOLD
from ser_lightning.data.shards import check_out_dir, rejection_summary, write_shards
from ser_lightning.labels import get_class_set

logger = logging.getLogger("ser_lightning.prepare")

DROP_HELP = (
    "keep utterances with votes for classes outside --classes, without those votes (counted in card.json "
    "reader.dropped_votes and warned); by default such an utterance is rejected (reason in rejected.jsonl)"
)

Reader = Callable[[argparse.Namespace], tuple[list[UtteranceRecord], ReadReport]]


def _ratios(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"ratios must be three numbers like 0.8,0.1,0.1, got {text!r}") from err
    if len(values) != 3 or any(v < 0 for v in values) or sum(values) <= 0:
        raise argparse.ArgumentTypeError(f"ratios must be three non-negative numbers like 0.8,0.1,0.1, got {text!r}")
    return values  # type: ignore[return-value]


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """Keyword arguments for the options the user gave; the reader's own defaults apply to the rest."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


# --------------------------------------------------------------------------------------------
# One function per corpus: map flags to the reader's keywords (imports stay lazy)
# --------------------------------------------------------------------------------------------


def _read_iemocap(args: argparse.Namespace) -> tuple[list[UtteranceRecord], ReadReport]:
    from ser_lightning.corpora.iemocap import read_iemocap

    kwargs = _given(args, "classes", "split", "seed", "ratios", "test_session", "val_session", "drop_out_of_set_votes")
    return read_iemocap(args.root, self_ratings=args.self_ratings, **kwargs)


def _read_msp_podcast(args: argparse.Namespace) -> tuple[list[UtteranceRecord], ReadReport]:
    from ser_lightning.corpora.msp_podcast import read_msp_podcast

    names = ("classes", "split", "folds", "fold", "seed", "merged_weights", "drop_out_of_set_votes")
    kwargs = _given(args, *names)
    if "merged_weights" in kwargs:
        kwargs["merged_weights"] = tuple(kwargs["merged_weights"])
    return read_msp_podcast(args.root, **kwargs)


def _read_crema_d(args: argparse.Namespace) -> tuple[list[UtteranceRecord], ReadReport]:
    from ser_lightning.corpora.crema_d import read_crema_d

    return read_crema_d(args.root, **_given(args, "seed", "ratios", "modality"))


def _read_manifest(args: argparse.Namespace) -> tuple[list[UtteranceRecord], ReadReport]:
    from ser_lightning.corpora.manifest import read_manifest

    names = ("root", "split", "seed", "ratios", "drop_out_of_set_votes")
    return read_manifest(args.manifest, args.classes, **_given(args, *names))


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------


def _common_options(root_required: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--root", type=Path, required=root_required, help="corpus root directory")
    p.add_argument("--out", type=Path, required=True, help="output shard directory")
    p.add_argument("--seed", type=int, help="seed of random splits (reader default: 0)")
    p.add_argument("--workers", type=_positive_int, default=1, help="processes decoding/encoding audio")
    p.add_argument("--min-duration", type=float, default=0.25, help="reject shorter utterances (seconds)")
    p.add_argument("--maxcount", type=_positive_int, default=1000, help="samples per shard at most")
    p.add_argument(
        "--silence-threshold",
        type=_non_negative,
        default=SILENCE_THRESHOLD,
        help="reject silent clips: mono peak |x| below this, full scale 1.0 (default %(default)g = -80 dBFS; "
        "0 keeps them)",
    )
    p.add_argument(
        "--max-duration",
        type=_non_negative,
        default=DEFAULT_MAX_DURATION,
        help="clips longer than this (seconds) are KEPT but counted in card.json audio_checks.long_utterances and "
        "warned (default %(default)g); add --reject-over-max-duration to reject them",
    )
    p.add_argument(
        "--reject-over-max-duration", action="store_true", help="reject clips longer than --max-duration"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty directory without card.json (only shard, card and rejected files are replaced)",
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


# the manifest's columns (CSV) / keys (JSONL), as ser_lightning.corpora.manifest reads them; docs/shard-format.md
MANIFEST_COLUMNS = """\
columns (CSV) or keys (JSON Lines):
  audio         required: audio file, relative to --root, else to the manifest's folder
  id            utterance id (default: the audio file's stem)
  transcript    the words spoken (for models that read text)
  speaker       speaker id (stored in each sample's JSON)
  votes, one of:
    <class>     CSV: one vote-count column per class, named like the class (case-insensitive; all classes)
    votes       JSONL: {class: count} or a list aligned with the classes
    labels      one label per rater (CSV: ';'-separated; JSONL: a list, an entry may be a list of tags)
  valence, arousal, dominance
                dimensional ratings: all three or none
  vad_scale     their scale as "lo,hi" (JSONL also [lo, hi])
  split         with --split given: train, val, test, test1, test2, test3 (dev, valid, validation = val)
A row whose audio file is missing or whose votes name a class outside --classes is rejected with its reason
(see --drop-out-of-set-votes); other unknown CSV columns are reported as unused."""


def build_parser() -> argparse.ArgumentParser:
    """The ``ser-prepare`` argument parser with one sub-command per corpus."""
    parser = argparse.ArgumentParser(prog="ser-prepare", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="corpus", required=True, metavar="CORPUS")
    corpus_root = _common_options(root_required=True)
    ratios_help = "train,val,test fractions of a random split, e.g. 0.8,0.1,0.1 (reader default)"

    p = sub.add_parser("iemocap", parents=[corpus_root], help="IEMOCAP (Session1..5 evaluation files)")
    p.add_argument("--classes", choices=["iemocap4", "iemocap4x"], help="class set (default iemocap4)")
    p.add_argument("--self-ratings", action="store_true", help="count the actors' self-ratings as votes")
    p.add_argument(
        "--drop-out-of-set-votes", action="store_true", default=None, help=DROP_HELP + " (iemocap4x always drops)"
    )
    p.add_argument("--split", choices=["random", "session"], help="random utterance split or held-out sessions")
    p.add_argument("--ratios", type=_ratios, help=ratios_help)
    p.add_argument("--test-session", type=int, help="test session (1-5) with --split session")
    p.add_argument("--val-session", type=int, help="validation session (1-5) with --split session")
    p.set_defaults(reader=_read_iemocap)

    p = sub.add_parser("msp-podcast", parents=[corpus_root], help="MSP-Podcast (Labels/labels_detailed.csv)")
    p.add_argument("--classes", help="class set: msp8 (default), msp9 or class names A,B,C")
    p.add_argument("--split", choices=["official", "folds"], help="official partition or speaker folds")
    p.add_argument("--folds", type=_positive_int, help="number of folds with --split folds")
    p.add_argument("--fold", type=int, help="test fold with --split folds")
    p.add_argument(
        "--merged-weights",
        type=_non_negative,
        nargs=2,
        metavar=("W_P", "W_S"),
        help="weights of the merged source, normalise(W_P x primary distribution + W_S x secondary distribution), "
        "each rater's secondaries sharing one vote (reader default: 0.95 0.05, the entropy-curriculum authors')",
    )
    p.add_argument("--drop-out-of-set-votes", action="store_true", default=None, help=DROP_HELP)
    p.set_defaults(reader=_read_msp_podcast)

    p = sub.add_parser("crema-d", parents=[corpus_root], help="CREMA-D (processedResults/tabulatedVotes.csv)")
    p.add_argument("--ratios", type=_ratios, help="train,val,test fractions of the speaker split (reader default)")
    p.add_argument("--modality", choices=["voice", "face", "av"], help="whose votes: audio-only raters by default")
    p.set_defaults(reader=_read_crema_d)

    p = sub.add_parser(
        "manifest",
        parents=[_common_options(root_required=False)],
        help="a CSV/JSONL manifest",
        description="Shards from a manifest: CSV or JSON Lines (by the file suffix), one utterance per row.",
        epilog=MANIFEST_COLUMNS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--manifest", type=Path, required=True, help="manifest file")
    p.add_argument("--classes", required=True, help="class-set name (e.g. cremad6) or class names A,B,C")
    p.add_argument("--split", choices=["given", "random"], help="the manifest's split column or a random split")
    p.add_argument("--ratios", type=_ratios, help=ratios_help)
    p.add_argument("--drop-out-of-set-votes", action="store_true", default=None, help=DROP_HELP)
    p.set_defaults(reader=_read_manifest)
    return parser


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


# Reader notes that mean labels were lost or a column was not read: warned, not just logged.
_WARNED_NOTES = ("unused_column:", "secondary_outside_class_set")


def _log_reader_report(report: ReadReport) -> None:
    if report.skipped:
        logger.info("reader skipped %d utterances (listed in rejected.jsonl)", len(report.skipped))
    out_of_set = sum(1 for r in report.skipped.values() if r.startswith("votes outside class set"))
    if out_of_set:
        logger.warning("%d utterances rejected for votes outside the class set (%s)", out_of_set, OUT_OF_SET_HINT)
    if report.dropped_votes:
        logger.warning(
            "%d kept utterances lost votes outside the class set (card.json reader.dropped_votes): %s",
            report.utterances_with_dropped_votes,
            {k: round(v, 6) for k, v in report.dropped_votes.most_common()},
        )
    if report.ignored_labels:
        logger.info("labels outside the class set, not counted: %s", dict(report.ignored_labels.most_common()))
    for note, count in sorted(report.notes.items()):
        level = logging.WARNING if note.startswith(_WARNED_NOTES) else logging.INFO
        logger.log(level, "reader note %s: %d", note, count)


def _log_summary(out_dir: Path, card: dict[str, Any]) -> None:
    rejected = rejection_summary(out_dir)
    for split, kept in card["num_samples"].items():
        reasons = rejected.get(split, {})
        detail = f" ({', '.join(f'{r}: {n}' for r, n in sorted(reasons.items()))})" if reasons else ""
        logger.info("%-6s kept %6d, rejected %5d%s", split, kept, sum(reasons.values()), detail)
    if "reader" in rejected:
        logger.info("reader skipped %d utterances before any audio was read", sum(rejected["reader"].values()))
    stats = card["stats"]["all"]
    logger.info(
        "%s: %d samples in %d shards, %d rejected; fleiss_kappa %s, entropy_mean %s",
        out_dir,
        sum(card["num_samples"].values()),
        sum(len(v) for v in card["shards"].values()),
        card["rejected"],
        stats["fleiss_kappa"],
        stats["entropy_mean"],
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ser-prepare``; returns the exit status (0 ok, 1 bad input or nothing kept, 2 usage error).

    Args:
        argv: command-line arguments without the program name (``sys.argv[1:]`` when ``None``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    if args.corpus == "manifest":
        try:
            get_class_set(args.classes)
        except (KeyError, ValueError) as err:
            parser.error(f"--classes: {err}")
    try:
        check_out_dir(args.out, args.overwrite)
        records, report = args.reader(args)
        _log_reader_report(report)
        card = write_shards(
            records,
            args.out,
            min_duration=args.min_duration,
            maxcount=args.maxcount,
            workers=args.workers,
            report=report,
            progress=not args.no_progress,
            overwrite=args.overwrite,
            silence_threshold=args.silence_threshold,
            max_duration=args.max_duration,
            reject_over_max_duration=args.reject_over_max_duration,
        )
    except (OSError, ValueError, KeyError) as err:
        logger.error("%s", err)
        return 1
    _log_summary(args.out, card)
    if not sum(card["num_samples"].values()):
        logger.error("no utterance was kept; see %s", args.out / "rejected.jsonl")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
