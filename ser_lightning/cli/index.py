"""``ser-index``: build the DiME-Aug neighbour index and minority-class pool beside the shards."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from ser_lightning.data.dime.index import FEATURE_BLOCKS, Encoder, FeatureConfig, build_dime_index


def _load_encoder(spec: str) -> Encoder:
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise argparse.ArgumentTypeError(f"--encoder must look like 'package.module:callable', got {spec!r}")
    fn = getattr(importlib.import_module(module), attr)
    if not callable(fn):
        raise argparse.ArgumentTypeError(f"{spec} is not callable")
    return fn


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ser-index",
        description="Build <SHARDS>/dime/: the DiME-Aug neighbour index (k nearest neighbours inside each "
        "minority class) and the memory-mapped audio pool of the minority-class utterances.",
    )
    p.add_argument("shards", metavar="SHARDS", help="a `ser-prepare --out` directory (card.json + shards): a path or "
                   "a URL (s3://, gs://, http(s)://)")  # fmt: skip
    p.add_argument("--out", help="the index directory (default: SHARDS/dime; needed when SHARDS is remote)")
    p.add_argument("--label-source", default="primary", help="votes that define the dominant class (default: primary)")
    p.add_argument("--ratio", type=float, default=0.3, help="minority threshold x majority class count (default: 0.3)")
    p.add_argument("--k", type=int, default=3, help="neighbours per minority utterance (default: 3)")
    p.add_argument(
        "--features",
        default="acoustic,lexical",
        help=f"comma-separated feature blocks among {','.join(FEATURE_BLOCKS)} (default: acoustic,lexical)",
    )
    p.add_argument("--encoder", help="'module:callable' taking (audio, sample_rate, transcript) -> 1-D features")
    p.add_argument("--n-mfcc", type=int, default=13, help="MFCC coefficients (default: 13)")
    p.add_argument("--hash-dim", type=int, default=32, help="hashed bag-of-words buckets (default: 32)")
    p.add_argument("--split", default="train", help="split to index (default: train)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ser-index``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error("--k must be >= 1")
    if not 0 < args.ratio <= 1:
        parser.error("--ratio must be in (0, 1]")
    blocks = tuple(b.strip() for b in args.features.split(",") if b.strip())
    if ("encoder" in blocks) != bool(args.encoder):
        parser.error("the 'encoder' feature block and --encoder go together")
    try:
        config = FeatureConfig(blocks=blocks, n_mfcc=args.n_mfcc, hash_dim=args.hash_dim)
        encoder = _load_encoder(args.encoder) if args.encoder else None
    except (ValueError, argparse.ArgumentTypeError, ImportError, AttributeError) as err:
        parser.error(str(err))
    try:
        out = build_dime_index(
            args.shards,
            label_source=args.label_source,
            ratio=args.ratio,
            k=args.k,
            features=config,
            encoder=encoder,
            split=args.split,
            progress=not args.quiet,
            out_dir=args.out,
        )
    except (FileNotFoundError, KeyError, ValueError) as err:
        parser.error(str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err))
    index = json.loads((out / "index.json").read_text())
    print(
        f"{out}: {index['train_size']} {args.split} utterances, counts {index['counts']}, "
        f"minority {index['minority_classes']}, pool {len(index['pool']['ids'])} clips, "
        f"deficit amounts {index['deficit']}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
