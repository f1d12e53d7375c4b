"""``ser-prepare manifest --help`` lists the manifest's columns, as the reader knows them."""

from __future__ import annotations

import pytest

from ser_lightning.cli.prepare import main
from ser_lightning.corpora.manifest import KNOWN_FIELDS


def test_manifest_help_lists_every_column(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["manifest", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    columns = {line.split()[0].rstrip(",") for line in out.split("keys (JSON Lines):")[1].splitlines() if line.strip()}
    assert set(KNOWN_FIELDS) <= columns | {"arousal", "dominance"}  # valence, arousal, dominance share a line
    for name in KNOWN_FIELDS:
        assert name in out
    assert "<class>" in columns  # CSV: one vote-count column per class
