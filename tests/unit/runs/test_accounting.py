"""The pass's accounting with invalid samples: scored + invalid + skipped must equal the card's count."""

from __future__ import annotations

import pytest
import torch

from ser_lightning.runs.accounting import PassTally, incomplete_message, pass_report

SKIP = {"key": "k1", "shard": "s.tar", "reason": "bad flac"}


def _tally(scored: int, invalid: int, skipped: int = 0) -> dict:
    tally = PassTally()
    tally.add_skips({"skipped": [dict(SKIP, key=f"k{i}") for i in range(skipped)]})
    tally.add_scored(torch.full((scored, 3), 1 / 3), None)
    tally.add_invalid(invalid)
    return tally.as_json()


def test_invalid_samples_are_summed_over_ranks_and_complete_the_pass():
    tallies = [_tally(3, 1, skipped=1), _tally(2, 2)]
    report = pass_report("test", tallies, {"split": "test", "expected": 9, "allow_partial": False}, limited=False)
    assert (report["scored"], report["invalid"], report["skipped"]) == (5, 3, 1)
    assert report["complete"] is True
    short = pass_report("test", tallies, {"split": "test", "expected": 10, "allow_partial": False}, limited=False)
    assert short["complete"] is False  # one sample neither scored, invalid nor skipped
    assert "5 were scored, 3 had no valid prediction and 1 skipped" in incomplete_message("test", short)
    cut = pass_report("test", tallies, {"split": "test", "expected": 9, "allow_partial": False}, limited=True)
    assert cut["complete"] is False


def test_a_tally_without_invalid_counts_none_and_reads_as_before():
    old = {k: v for k, v in _tally(4, 0).items() if k != "invalid"}  # a rank's tally of an older version
    report = pass_report("val", [old], {"split": "val", "expected": 4, "allow_partial": False}, limited=False)
    assert (report["invalid"], report["complete"]) == (0, True)
    report = pass_report("val", [old], {"split": "val", "expected": 5, "allow_partial": False}, limited=False)
    assert "had no valid prediction" not in incomplete_message("val", report)
    assert "4 were scored and 0 skipped" in incomplete_message("val", report)


def test_invalid_counts_must_not_be_negative():
    with pytest.raises(ValueError, match="invalid"):
        PassTally().add_invalid(-1)
