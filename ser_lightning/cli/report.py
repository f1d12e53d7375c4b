"""``ser-report RUN_DIRS... --out DIR``: the paper's Table 2 and Fig. 3 for any set of tested runs.

A run directory holds ``test_metrics.json`` and ``test_predictions.jsonl`` (both written by ``train.py test``),
for an ALM and a trained model alike. Writes into ``--out``:

- ``report.md`` / ``report.csv``: JS, BC, R², accuracy and macro-F1 per run, n scored, the utterances left out as
  invalid and the valid-output fraction of every run (paper 003 Appendix A.2: only valid answers are evaluated;
  ``n/a`` for runs that did not record them), and the relative change against the baseline run in percent,
  positive = better (Table 2).
- ``entropy_bins.png`` / ``entropy_bins.csv``: the median per-utterance JS, BC and R² in five equal-width bins of
  normalised target entropy H(target) / log C on [0, 1] (Fig. 3), with the count per bin.

Exit status 0, or 2 on a usage error (a missing file, an unknown baseline) with a one-line message. The tables
and plots are :mod:`ser_lightning.alm.report`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ser_lightning.alm.report import ReportError, build_report


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ser-report RUN_DIRS... --out DIR [--baseline N|NAME] [--labels a,b,...]``."""
    parser = argparse.ArgumentParser(prog="ser-report", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="directories with test_metrics.json + predictions")
    parser.add_argument("--out", type=Path, required=True, help="directory for report.md/.csv, entropy_bins.png/.csv")
    parser.add_argument("--baseline", help="baseline run: its label or 0-based position (default: the first)")
    parser.add_argument("--labels", help="comma-separated run labels (default: paths below their common parent)")
    args = parser.parse_args(argv)
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    try:
        build_report(args.run_dirs, args.out, args.baseline, labels)
    except ReportError as err:
        print(f"ser-report: error: {err}", file=sys.stderr)
        return 2
    print(f"ser-report: wrote report.md, report.csv, entropy_bins.png, entropy_bins.csv to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
