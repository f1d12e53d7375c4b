"""Answer parsing: one class name or None with a reason."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ser_lightning.alm.parsing import normalise_answer, parse_label

IEMOCAP = ("Anger", "Happiness", "Neutral state", "Sadness")
MSP = ("Angry", "Happy", "Neutral", "Sad")


@pytest.mark.parametrize(
    ("raw", "classes", "label"),
    [
        ("Anger", IEMOCAP, "Anger"),
        ("anger", IEMOCAP, "Anger"),
        ("ANGER.", IEMOCAP, "Anger"),
        ("  **Sadness**  \n", IEMOCAP, "Sadness"),
        ("`Happiness`", IEMOCAP, "Happiness"),
        ("# Neutral state", IEMOCAP, "Neutral state"),
        ("- Neutral-state", IEMOCAP, "Neutral state"),
        ("neutral   STATE!", IEMOCAP, "Neutral state"),
        ('"Sad"', MSP, "Sad"),
        ("The dominant emotion is **Happy**.", MSP, "Happy"),
        ('{"emotion": "Angry"}', MSP, "Angry"),
        ("1. Neutral", MSP, "Neutral"),
        ("Emotion: sad\n", MSP, "Sad"),
        ("Neutral state", ("Neutral", "Neutral state", "Sad"), "Neutral state"),  # longest name wins, not both
        ("Happy.", ("Happy", "Unhappy"), "Happy"),
        ("unhappy", ("Happy", "Unhappy"), "Unhappy"),
        ("Colère", ("Colère", "Joie"), "Colère"),
    ],
)
def test_valid_answers(raw: str, classes: tuple[str, ...], label: str) -> None:
    assert parse_label(raw, classes) == (label, None)


@pytest.mark.parametrize(
    ("raw", "classes", "reason"),
    [
        ("", MSP, "empty answer"),
        ("   \n", MSP, "empty answer"),
        (None, MSP, "empty answer"),
        ("Frustrated", MSP, "no class name in the answer"),
        ("sadness", MSP, "no class name in the answer"),  # whole words only: no inflections
        ("unhappy", MSP, "no class name in the answer"),  # the authors' substring match would say Happy
        ("Not angry but sad", MSP, "several class names in the answer: Angry, Sad"),
        ("Sad or Happy", MSP, "several class names in the answer: Happy, Sad"),
        ("Neutral state, or maybe Anger", IEMOCAP, "several class names in the answer: Anger, Neutral state"),
    ],
)
def test_invalid_answers(raw: str | None, classes: tuple[str, ...], reason: str) -> None:
    assert parse_label(raw, classes) == (None, reason)


def test_same_name_twice_is_one_label() -> None:
    assert parse_label("Sad. Definitely sad.", MSP) == ("Sad", None)


def test_colliding_class_names_are_an_error() -> None:
    with pytest.raises(ValueError, match="distinct"):
        parse_label("sad", ("Sad", "sad!"))


def test_normalise() -> None:
    assert normalise_answer("**Neutral-State**,\n> ok") == "neutral state ok"


# Words that never contain a class name of MSP as a whole word: letters other than those spelling the names.
_FILLER = st.text(alphabet="bcfikmqrvwxz ", max_size=30)
_DECOR = st.sampled_from(
    [("", ""), ("*", "*"), ("**", "**"), ("`", "`"), ("_", "_"), ('"', '"'), ("'", "'"), ("# ", ""), ("- ", "")]
)


@given(st.sampled_from(MSP), _FILLER, _FILLER, _DECOR, st.booleans())
def test_one_name_in_any_sentence(name: str, before: str, after: str, decor: tuple[str, str], upper: bool) -> None:
    shown = name.upper() if upper else name.lower()
    raw = f"{before}\n{decor[0]}{shown}{decor[1]}. {after}"
    assert parse_label(raw, MSP) == (name, None)


@given(st.lists(st.sampled_from(MSP), min_size=2, max_size=4, unique=True), _FILLER)
def test_two_different_names_are_invalid(names: list[str], filler: str) -> None:
    label, reason = parse_label(f" {filler} ".join(names), MSP)
    assert label is None
    assert reason == "several class names in the answer: " + ", ".join(c for c in MSP if c in names)


@given(_FILLER)
def test_no_name_is_invalid(filler: str) -> None:
    label, reason = parse_label(filler, MSP)
    assert label is None
    assert reason in ("empty answer", "no class name in the answer")
