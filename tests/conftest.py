"""Shared fixtures: the optional ../shared data beside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
CREMA_D_VOTES = SHARED / "data" / "crema-d" / "tabulatedVotes.csv"


@pytest.fixture(scope="session")
def crema_d_votes_path() -> Path:
    """The real CREMA-D vote table, or a skip when ../shared is absent (a user's clone)."""
    if not CREMA_D_VOTES.is_file():
        pytest.skip(f"real CREMA-D vote table not found at {CREMA_D_VOTES} (../shared is absent)")
    return CREMA_D_VOTES
