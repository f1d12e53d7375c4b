"""The neutral-guard hard label (paper 004's authors' ``_consensus_from_dist``) on cases worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ser_lightning.losses.hard_targets import neutral_guard_class, tie_order

MSP9 = ["Angry", "Sad", "Happy", "Surprise", "Fear", "Disgust", "Contempt", "Neutral", "Other"]
NEU = MSP9.index("Neutral")


def _label(dist: dict[str, float], neutral_votes: float, classes=MSP9) -> int:
    target = torch.tensor([[dist.get(c, 0.0) for c in classes]], dtype=torch.float64)
    votes = torch.zeros_like(target)
    if "Neutral" in classes:
        votes[0, classes.index("Neutral")] = neutral_votes
    return int(neutral_guard_class(target, votes, classes)[0])


def test_a_non_neutral_top_class_wins_outright():
    assert _label({"Angry": 0.6, "Neutral": 0.4}, 2) == MSP9.index("Angry")


def test_neutral_wins_with_two_votes_035_and_a_010_margin():
    assert _label({"Neutral": 0.5, "Sad": 0.3, "Happy": 0.2}, 2) == NEU  # margin 0.2


@pytest.mark.parametrize(
    ("dist", "votes", "why"),
    [
        ({"Neutral": 0.5, "Sad": 0.3, "Happy": 0.2}, 1, "one primary vote"),
        ({"Neutral": 0.34, "Sad": 0.33, "Happy": 0.33}, 3, "p < 0.35"),
        ({"Neutral": 0.45, "Sad": 0.4, "Happy": 0.15}, 4, "margin 0.05 < 0.10"),
    ],
)
def test_a_guarded_neutral_gives_way_to_the_best_non_neutral(dist, votes, why):
    assert _label(dist, votes) == MSP9.index("Sad"), why


def test_ties_go_to_a_non_neutral_class_then_to_the_later_name():
    # Neutral ties Happy: the non-neutral Happy ranks first, so no guard is needed
    assert _label({"Neutral": 0.5, "Happy": 0.5}, 5) == MSP9.index("Happy")
    # Angry, Sad and Surprise tie: their reverse alphabetical order puts Surprise first (theirs: surprise > sad > ang)
    assert _label({"Angry": 1 / 3, "Sad": 1 / 3, "Surprise": 1 / 3}, 0) == MSP9.index("Surprise")


def test_the_margin_is_measured_against_the_second_ranked_class():
    # exactly 0.10 ahead of the second passes (>=), as theirs
    assert _label({"Neutral": 0.55, "Other": 0.45}, 2) == NEU
    assert _label({"Neutral": 0.5, "Other": 0.45, "Sad": 0.05}, 2) == MSP9.index("Other")


def test_rows_without_primary_votes_get_minus_one():
    target = torch.tensor([[0.2, 0.8], [0.7, 0.3]], dtype=torch.float64)
    votes = torch.tensor([[1.0, 4.0], [math.nan, math.nan]])
    assert neutral_guard_class(target, votes, ["Angry", "Neutral"]).tolist() == [1, -1]


def test_without_a_neutral_class_it_is_the_tie_ordered_plurality():
    classes = ["Angry", "Happy", "Sad"]
    assert _label({"Angry": 0.5, "Happy": 0.5}, 0, classes) == 1  # Happy after Angry in the alphabet
    assert tie_order(["Angry", "Neutral", "Sad"]) == [2, 0, 1]
